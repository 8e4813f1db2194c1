"""The A2C loss of a categorical policy on one-hot states, by lookup: the tabular family's scoring.

Observations are one-hot states, so one forward pass on the S states of each task
(`rl.tabular.sampler.policy_table`) gives every visited state's logits and value: `policy_lookup`
reads them, `trajectory_a2c_loss` is the A2C loss of `rl.losses` on them, and `TabularScorer` is
the `rl.estimators.Scorer` the tabular tasks hand the meta-gradient estimators.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from rl.estimators import Scores
from rl.losses import a2c_loss, lambda_returns
from rl.sampling import PolicyFn
from rl.tabular.sampler import Trajectories, policy_table

__all__ = ["TabularScorer", "policy_lookup", "trajectory_a2c_loss"]


def policy_lookup(
    policy: PolicyFn, trajectories: Trajectories, num_states: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One evaluation of ``policy`` on the S one-hot states of each task
    (`rl.tabular.sampler.policy_table`), for losses of ``trajectories`` to look up.

    Returns:
        The logit table ``[T, S, A]``; the values of the visited states and of the last
        next-state ``[H + 1, T, N]``, with gradient; and the task index ``[1, T, 1]`` that
        selects a task's row of the table for every step and episode.
    """
    rewards = trajectories.rewards
    t = rewards.shape[1]
    logit_table, value_table = policy_table(policy, t, num_states, rewards.dtype, rewards.device)
    task = torch.arange(t, device=rewards.device).view(1, t, 1)
    visited = torch.cat([trajectories.states, trajectories.next_states[-1:]])  # [H + 1, T, N]
    return logit_table, value_table[task, visited], task


def trajectory_a2c_loss(
    policy: PolicyFn,
    trajectories: Trajectories,
    num_states: int,
    *,
    gamma: float,
    gae_lambda: float,
    value_coef: float = 0.5,
    entropy_coef: float = 0.0,
    per_task: bool = False,
) -> torch.Tensor:
    """A2C loss of ``policy`` on sampled trajectories (the policy is re-evaluated with autograd).

    Observations are one-hot states, so one forward pass on the S states of each task
    (`rl.tabular.sampler.policy_table`) gives, by lookup, the logits and values (with gradient) of
    every visited state and the detached value of the last next-state that the λ-returns
    bootstrap from. This is the same function of the parameters as a forward pass per visited
    state, at a fraction of the cost.

    Args:
        policy: Observations ``[T, N, S]`` -> ``(logits [T, N, A], values [T, N])``.
        trajectories: ``[H, T, N]`` fields from `rl.tabular.sampler.sample_trajectories`.
        num_states: S, for the one-hot observations.
        gamma: Discount γ.
        gae_lambda: λ.
        value_coef: Value-loss coefficient.
        entropy_coef: Entropy-bonus coefficient.
        per_task: Return one loss per task, ``[T]`` (each averaged over its own steps and
            episodes), instead of the scalar average over everything.
    """
    logit_table, values, task = policy_lookup(policy, trajectories, num_states)
    returns = lambda_returns(trajectories.rewards, values[1:].detach(), gamma, gae_lambda)
    return a2c_loss(
        logit_table[task, trajectories.states],
        trajectories.actions,
        values[:-1],
        returns,
        value_coef,
        entropy_coef,
        dims=(0, 2) if per_task else None,
    )


@dataclass(frozen=True)
class TabularScorer:
    """A categorical policy on one-hot states, as the losses of `rl.estimators` score it: one
    evaluation per state, then lookups (`policy_lookup`). Its A2C loss is `trajectory_a2c_loss`."""

    num_states: int

    def __call__(self, policy: PolicyFn, trajectories: Any) -> Scores:
        logits, values, task = policy_lookup(policy, trajectories, self.num_states)
        log_pi = torch.log_softmax(logits, dim=-1)
        log_probs = log_pi[task, trajectories.states, trajectories.actions]

        def entropy() -> torch.Tensor:
            visited = torch.log_softmax(logits[task, trajectories.states], dim=-1)
            return -(visited.exp() * visited).sum(-1)

        return Scores(log_probs, values, entropy)

    def a2c_loss(self, policy: PolicyFn, trajectories: Any, **settings: Any) -> torch.Tensor:
        return trajectory_a2c_loss(policy, trajectories, self.num_states, **settings)
