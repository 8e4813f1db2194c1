"""Vectorised trajectory sampling for a whole meta-batch of tabular MDPs.

`sample_trajectories` steps every (task, trajectory) pair at once with tensor ops; the only
Python loop is over the ``horizon`` time steps. It draws from exactly the distribution of
`rl.tabular.env.TabularMDPEnv` (a test compares the two statistically), with all randomness
from an explicit `torch.Generator`, drawn up front (`SamplingNoise`) so that the
simulation itself (`simulate`) is a deterministic function of policy, tasks and noise.

It is generic in the policy: ``policy`` maps one-hot observations ``[T, N, S]`` (T tasks, N
observations each) to ``(logits [T, N, A], values [T, N])``. A single shared ``nn.Module`` does
this (it broadcasts over leading dimensions); so does a function applying per-task parameters.
Observations are one-hot states, so the policy is evaluated once per call on the S possible
observations of every task (`policy_table`) and then looked up; this is what makes a
sampling call cost about one network evaluation however many episodes it draws.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from rl.sampling import PolicyFn, check_horizon, check_size, episode_returns, task_of
from rl.tabular.mdp import TabularMDP, TabularMDPBatch

__all__ = [
    "MDPTensors",
    "SamplingNoise",
    "Trajectories",
    "policy_table",
    "sample_trajectories",
    "simulate",
]


class MDPTensors(NamedTuple):
    """A meta-batch of tasks as tensors, for sampling.

    Attributes:
        transitions: ``[T, S, A, S]`` next-state probabilities P(s' | s, a) of every task.
        reward_means: ``[T, S, A]`` mean rewards R(s, a).
    """

    transitions: torch.Tensor
    reward_means: torch.Tensor

    @classmethod
    def from_mdps(
        cls, mdps: TabularMDP | TabularMDPBatch, dtype: torch.dtype = torch.float32
    ) -> MDPTensors:
        if isinstance(mdps, TabularMDP):
            mdps = TabularMDPBatch(mdps.transitions[None], mdps.reward_means[None])
        return cls(
            # Probabilities stay in float64: sampling builds cumulative sums from them.
            transitions=torch.as_tensor(mdps.transitions, dtype=torch.float64),
            reward_means=torch.as_tensor(mdps.reward_means, dtype=dtype),
        )

    @property
    def num_tasks(self) -> int:
        return int(self.transitions.shape[0])

    # The layout of a TabularMDPBatch's arrays, as tensors: the same sizes.
    num_states = TabularMDPBatch.num_states
    num_actions = TabularMDPBatch.num_actions

    def select(self, index: int) -> MDPTensors:
        """The one-task batch holding task ``index``."""
        return MDPTensors(self.transitions[index : index + 1], self.reward_means[index : index + 1])


def policy_table(
    policy: PolicyFn,
    num_tasks: int,
    num_states: int,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The policy evaluated once on every one-hot state of every task.

    Observations are one-hot states, so a policy is fully described by its outputs on the S
    possible observations: ``(logits [T, S, A], values [T, S])``. Sampling and the loss look
    these tables up instead of evaluating the network on every visited state.
    """
    obs = torch.eye(num_states, dtype=dtype, device=device)
    return policy(obs.expand(num_tasks, num_states, num_states))


class Trajectories(NamedTuple):
    """Sampled episodes, time-major: every field is ``[H, T, N]`` (horizon, tasks, trajectories).

    ``next_states[t] == states[t + 1]``; ``next_states[-1]`` is the state at the horizon, whose
    value bootstraps the returns (the episode is truncated there, not terminated).
    """

    states: torch.Tensor
    actions: torch.Tensor
    rewards: torch.Tensor
    next_states: torch.Tensor

    episode_returns = episode_returns
    task = task_of


class SamplingNoise(NamedTuple):
    """All the randomness of one sampling call, drawn up front.

    Given the noise, sampling is a deterministic function of the policy and the tasks
    (`simulate`), and task b's episodes depend only on ``noise.task(b)``: sampling a batch at
    once or its tasks one by one with the slices gives the same trajectories.

    Attributes:
        uniform: ``[H, T, N, 1]`` float64 in (0, 1]: one number per step and episode, which picks
            the (action, next state) pair by inverse CDF.
        normal: ``[H, T, N]`` standard normal reward noise.
    """

    uniform: torch.Tensor
    normal: torch.Tensor

    @classmethod
    def draw(
        cls,
        generator: torch.Generator,
        horizon: int,
        num_tasks: int,
        num_trajectories: int,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> SamplingNoise:
        check_horizon(horizon)
        check_size("num_trajectories", num_trajectories)
        shape = (horizon, num_tasks, num_trajectories)
        # 1 − U[0, 1) lies in (0, 1]: u = 0 would select a first entry of probability 0.
        uniform = torch.rand((*shape, 1), generator=generator, dtype=torch.float64, device=device)
        normal = torch.randn(shape, generator=generator, dtype=dtype, device=device)
        return cls(1.0 - uniform, normal)

    task = task_of


def sample_trajectories(
    policy: PolicyFn,
    mdps: MDPTensors,
    num_trajectories: int,
    horizon: int,
    generator: torch.Generator,
) -> Trajectories:
    """Roll out ``num_trajectories`` episodes of ``horizon`` steps in every task of ``mdps``.

    Draws the noise from ``generator`` (`SamplingNoise.draw`) and runs `simulate`.

    Args:
        policy: Observations ``[T, N, S]`` -> ``(logits [T, N, A], values [T, N])``.
        mdps: The tasks, from `MDPTensors.from_mdps`.
        num_trajectories: N >= 1 per task.
        horizon: H >= 1 steps per episode.
        generator: The only source of randomness.

    Returns:
        `Trajectories` with fields ``[H, T, N]``.
    """
    dtype, device = mdps.reward_means.dtype, mdps.reward_means.device
    noise = SamplingNoise.draw(generator, horizon, mdps.num_tasks, num_trajectories, dtype, device)
    return simulate(policy, mdps, noise)


def simulate(policy: PolicyFn, mdps: MDPTensors, noise: SamplingNoise) -> Trajectories:
    """Run the episodes that ``noise`` determines, in every task of ``mdps`` at once.

    Every episode starts in state 0. In state s an action is drawn from ``softmax(logits(s))``,
    the next state from ``P(· | s, a)`` and the reward is ``R(s, a) + N(0, 1)``. Because the
    observation is the one-hot state, the policy is evaluated once on the S states of every task
    (`policy_table`), and each step draws the pair (action, next state) from its joint
    distribution ``π(a | s) P(s' | s, a)`` by inverse-CDF sampling with one uniform number per
    episode. The only Python loop is over the H steps. Runs without autograd: a loss
    re-evaluates the policy (`rl.tabular.losses.trajectory_a2c_loss`). A task whose policy has
    non-finite logits gets NaN rewards.

    Args:
        policy: Observations ``[T, N, S]`` -> ``(logits [T, N, A], values [T, N])``.
        mdps: The T tasks.
        noise: Randomness for H steps of N episodes in each of the T tasks.

    Returns:
        `Trajectories` with fields ``[H, T, N]``.
    """
    horizon, t, n, _ = noise.uniform.shape
    if t != mdps.num_tasks:
        raise ValueError(f"noise is for {t} tasks but there are {mdps.num_tasks}")
    s, a = mdps.num_states, mdps.num_actions
    means = mdps.reward_means
    device = means.device
    with torch.no_grad():
        logits, _ = policy_table(policy, t, s, means.dtype, device)
        # A diverged policy (non-finite logits, e.g. after too large inner steps) cannot act: its
        # task's episodes are simulated with uniform actions and their rewards set to NaN, so
        # the divergence shows in every return and loss computed from them, task by task.
        finite = torch.isfinite(logits).flatten(1).all(1)  # [T]
        logits = torch.where(finite.view(t, 1, 1), logits, 0.0)
        pi = torch.softmax(logits.to(torch.float64), dim=-1)
        # Joint distribution of (action, next state) given the state, one row per (task, state):
        # index a * S + s' of row (task, s) holds π(a | s) P(s' | s, a).
        joint = (pi.unsqueeze(-1) * mdps.transitions).reshape(t * s, a * s).cumsum(-1)
        # Exactly 1 at the end, so that every u in (0, 1] falls inside the table.
        joint = joint / joint[:, -1:]
        # Row of (task, state) in `joint`: task * S + state.
        task_offset = (torch.arange(t, device=device) * s).unsqueeze(1)
        row = task_offset.expand(t, n)  # every episode starts in state 0
        pairs = torch.empty((horizon, t, n, 1), dtype=torch.long, device=device)
        for step in range(horizon):
            # Inverse CDF: the first index whose cumulative probability reaches u (entries of
            # probability 0 are never chosen, as u > 0).
            torch.searchsorted(joint[row], noise.uniform[step], out=pairs[step])
            row = task_offset + pairs[step, :, :, 0] % s
        pairs = pairs[..., 0]
        actions = torch.div(pairs, s, rounding_mode="floor")
        next_states = pairs % s
        states = torch.cat([torch.zeros_like(next_states[:1]), next_states[:-1]])
        task = torch.arange(t, device=device).view(1, t, 1)
        # In the policy's dtype (its logits'), whatever the tasks' and the noise's.
        rewards = means.to(logits.dtype)[task, states, actions] + noise.normal.to(logits.dtype)
        rewards = torch.where(finite.view(1, t, 1), rewards, torch.nan)
    return Trajectories(states, actions, rewards, next_states)
