r"""Meta-gradient estimators for meta-RL: the losses a task hands the core, one set per estimator.

The meta-objective of MAML in RL, with support episodes τ sampled from the pre-update policy, is

$$M(\theta) = \mathbb{E}_{\tau \sim \pi_\theta}\big[J(U(\theta, \tau))\big],$$

where U is the inner update (A2C loss, inner optimiser) and J the expected return. Its gradient
has two terms (Stadie et al. 2018; Foerster et al. 2018; Rothfuss et al. 2019):

$$
\nabla M = \mathbb{E}_\tau\big[\partial_\theta U^\top \nabla J(U)\big]
+ \mathbb{E}_\tau\big[J(U)\,\nabla_\theta \log p_\theta(\tau)\big].
$$

The core differentiates the query loss through the inner steps, which gives the first term when
the query loss's gradient is an unbiased policy gradient of J at θ'. The second term, the
*pre-update sampling* term, rewards a pre-adaptation policy for collecting support data that
adapt well; it is what a task adds to its query loss with a "magic box" over the support
log-likelihoods. The estimators (``A2CSettings.meta_gradient``):

* ``seed``: TorchOpt's MAML-RL example: the A2C loss (GAE advantages, bootstrapped at the
  horizon) for support and query, no sampling term. Biased: it drops the second term, and its
  query gradient is not an unbiased gradient of J.
* ``dice``: Unbiased for the policy's parameters. The query loss is the policy gradient of J with
  undiscounted reward-to-go minus the critic's value (a state baseline, so unbiased) plus the
  critic's regression term, and the DiCE term ``−Σₖ Σᵢ (□(log p_{θₖ}(τₖᵢ)) − 1)·(Ĵ' − bₖᵢ)``
  over the episodes i of every support phase k: value 0, gradient ``−Σ (Ĵ' − bₖᵢ) ∇log p(τₖᵢ)``,
  with □(x) = exp(x − ⊥x) (Foerster et al. 2018) and Ĵ' the mean query return. The baseline
  bₖᵢ of episode i is the mean return of the *other* episodes of its phase: independent of τₖᵢ
  given the phase's policy, so the term stays unbiased, and specific to the task, so it removes
  most of the variance (with one episode per phase, the critic's value of the start state).
  The support loss is the MAML-RL example's A2C loss: U is unchanged.
* ``lvc``: ProMP's low-variance curvature estimator (Rothfuss et al. 2019): the support loss's
  policy term uses □(log π(a|s)) per step, so that its Hessian, which the meta-gradient contains,
  gains the per-step score outer products Σₜ ∇log π ∇log πᵀ Aₜ. Same first derivative (the
  inner update is the MAML-RL example's), no sampling term in the query loss, which is
  ``dice``'s policy gradient. Low variance, biased.

Gradients through the advantage weights of an inner loss (the critic's values) are not taken:
the advantages are constants of each loss, as in every A2C meta-RL implementation. The exact
oracle (`rl.tabular.oracle`) follows the same convention, so "unbiased" is exact with respect to it.
Reptile does not use the query loss for its update, so no estimator applies to it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple, Protocol

import torch

from rl.config import ESTIMATORS
from rl.losses import a2c_objective, lambda_returns, masked_mean
from rl.sampling import PolicyFn

__all__ = [
    "ESTIMATORS",
    "Scorer",
    "Scores",
    "log_likelihood",
    "magic_box",
    "policy_gradient_loss",
    "reward_to_go",
    "sampling_record",
    "sampling_term",
    "scored_a2c_loss",
    "support_objective",
]


class Scores(NamedTuple):
    """A policy evaluated on sampled episodes: all that the losses need from it.

    Attributes:
        log_probs: ``[H, T, N]`` log π(a_t | s_t) of the actions taken (a log-probability or a
            log-density), with gradient; 0 on the steps after an episode ended.
        values: ``[H + 1, T, N]`` V(s_t) of the visited states and of the last next-state.
        entropy: Computes ``[H, T, N]`` H[π(· | s_t)] (only the entropy bonus needs it).
        mask: ``[H, T, N]`` 1 on the steps inside an episode, 0 after it terminated (``None``:
            episodes never end before the horizon).
        continues: ``[H, T, N]`` 0 on a terminal step, else 1: the λ-returns' discount is
            γ·continues (``None``: no terminal steps).
        normalize: Standardise the advantages of the A2C policy term per task (see
            `rl.losses.a2c_objective`).
        baseline: ``[H + 1, T, N]`` detached values that replace the critic's in the advantages
            and the λ-returns' bootstrap (a baseline fitted to the episodes, such as
            `rl.continuous.linear_feature_baseline`); the critic still regresses on the
            λ-returns. ``None``: the critic's values.
    """

    log_probs: torch.Tensor
    values: torch.Tensor
    entropy: Callable[[], torch.Tensor]
    mask: torch.Tensor | None = None
    continues: torch.Tensor | None = None
    normalize: bool = False
    baseline: torch.Tensor | None = None

    def advantage_values(self) -> torch.Tensor:
        """``[H + 1, T, N]`` the detached values the advantages are measured from."""
        return self.values.detach() if self.baseline is None else self.baseline


class Scorer(Protocol):
    """How a family's policy scores its trajectories (`rl.tabular.losses.TabularScorer`,
    `rl.continuous.GaussianScorer`)."""

    def __call__(self, policy: Any, trajectories: Any) -> Scores: ...

    def a2c_loss(self, policy: Any, trajectories: Any, **settings: Any) -> torch.Tensor:
        """The A2C loss; ``settings`` are `scored_a2c_loss`'s keywords."""
        ...


def _returns(scores: Scores, rewards: torch.Tensor, gamma: float, lam: float) -> torch.Tensor:
    """λ-returns of the episodes, with γ cut to 0 on terminal steps."""
    discounts = gamma if scores.continues is None else gamma * scores.continues
    return lambda_returns(rewards, scores.advantage_values()[1:], discounts, lam)


def scored_a2c_loss(
    scores: Scores,
    rewards: torch.Tensor,
    *,
    gamma: float,
    gae_lambda: float,
    value_coef: float,
    entropy_coef: float,
    per_task: bool,
) -> torch.Tensor:
    """The A2C loss (`rl.losses.a2c_objective`) of scored episodes: any policy's."""
    dims = (0, 2) if per_task else None
    entropy = scores.entropy() if entropy_coef else None
    returns = _returns(scores, rewards, gamma, gae_lambda)
    return a2c_objective(
        scores.log_probs,
        scores.values[:-1],
        returns,
        value_coef,
        entropy,
        entropy_coef,
        dims,
        scores.mask,
        normalize=scores.normalize,
        baseline=None if scores.baseline is None else scores.baseline[:-1],
    )


def magic_box(x: torch.Tensor) -> torch.Tensor:
    """DiCE's □(x) = exp(x − ⊥x): value 1, gradient ∇x, and every higher derivative of exp."""
    return torch.exp(x - x.detach())


def reward_to_go(rewards: torch.Tensor) -> torch.Tensor:
    """``[H, ...]`` undiscounted sums of the rewards from step t to the end of the episode."""
    return rewards.flip(0).cumsum(0).flip(0)


def log_likelihood(
    policy: PolicyFn, trajectories: Any, scorer: Scorer, *, per_episode: bool = False
) -> torch.Tensor:
    """``[T]`` log-probability of each task's episodes under ``policy`` (``[T, N]``, one per
    episode, with ``per_episode``): the actions' terms, as the dynamics do not depend on the
    parameters. ``scorer``: the family's `Scorer`."""
    log_probs = scorer(policy, trajectories).log_probs
    return log_probs.sum(dim=0) if per_episode else log_probs.sum(dim=(0, 2))


def sampling_record(
    policy: PolicyFn, trajectories: Any, scorer: Scorer
) -> tuple[torch.Tensor, torch.Tensor]:
    """What the dice estimator keeps of one support phase: the episodes' log-likelihoods
    ``[T, N]`` (with their graph) and their baselines ``[T, N]`` (detached): the mean return of
    the other episodes of the phase, or the critic's value of the start state when N = 1."""
    scores = scorer(policy, trajectories)
    returns = trajectories.episode_returns().detach()  # [T, N]
    n = returns.shape[1]
    if n > 1:
        baselines = (returns.sum(1, keepdim=True) - returns) / (n - 1)
    else:
        baselines = scores.values[0].detach()  # V(s₀) of every episode: [T, 1]
    return scores.log_probs.sum(dim=0), baselines


def sampling_term(
    records: list[tuple[torch.Tensor, torch.Tensor]], query_returns: torch.Tensor, horizon: int
) -> torch.Tensor:
    """``[T]`` DiCE's term for the support sampling, per step: value 0, gradient
    ``−Σₖᵢ (Ĵ' − bₖᵢ) ∇log p(τₖᵢ) / H`` with ``Ĵ'`` the mean of ``query_returns [T, N']``."""
    mean_return = query_returns.detach().mean(1, keepdim=True)  # [T, 1]
    total = torch.zeros_like(mean_return[:, 0])
    for likelihoods, baselines in records:
        total = total - ((magic_box(likelihoods) - 1.0) * (mean_return - baselines)).sum(1)
    return total / horizon


def support_objective(
    policy: PolicyFn,
    trajectories: Any,
    scorer: Scorer,
    *,
    estimator: str,
    **settings: Any,
) -> torch.Tensor:
    """The inner loss: the MAML-RL example's A2C loss, with LVC's per-step magic box for ``lvc``.

    For ``lvc`` the policy term is ``−⊥A · (□(log π) − 1 + ⊥log π)``: the value and the gradient
    of the MAML-RL example's ``−⊥A · log π``, with the Hessian of ``−⊥A · □(log π)``.
    ``settings`` are `scored_a2c_loss`'s keywords (``gamma``, ``gae_lambda``, ``value_coef``,
    ``entropy_coef``, ``per_task``).
    """
    if estimator != "lvc":
        return scorer.a2c_loss(policy, trajectories, **settings)
    scores = scorer(policy, trajectories)
    log_probs = scores.log_probs
    boxed = magic_box(log_probs) - 1.0 + log_probs.detach()
    return scored_a2c_loss(scores._replace(log_probs=boxed), trajectories.rewards, **settings)


def policy_gradient_loss(
    policy: PolicyFn,
    trajectories: Any,
    scorer: Scorer,
    *,
    gamma: float,
    gae_lambda: float,
    value_coef: float,
    per_task: bool,
) -> torch.Tensor:
    r"""An unbiased policy-gradient loss of the expected (undiscounted) return, per step.

    ``−mean(log π(aₜ|sₜ) · ⊥(Gₜ − V(sₜ)))`` with Gₜ the undiscounted reward-to-go (no
    bootstrap: the episode ends at the horizon or at a terminal step), whose gradient is
    ``−∇J / H`` in expectation (V is a state baseline), plus the critic's regression on the
    MAML-RL example's λ-returns (``value_coef``), which only the critic's parameters feel when
    the torso is not shared.
    """
    scores = scorer(policy, trajectories)
    values, mask = scores.values, scores.mask
    dims = (0, 2) if per_task else tuple(range(values.dim()))
    rewards = trajectories.rewards
    advantages = reward_to_go(rewards) - scores.advantage_values()[:-1]
    returns = _returns(scores, rewards, gamma, gae_lambda)
    critic = masked_mean((returns - values[:-1]).pow(2), dims, mask)
    return -masked_mean(scores.log_probs * advantages, dims, mask) + value_coef * critic
