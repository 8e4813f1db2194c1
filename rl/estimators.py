r"""Meta-gradient estimators for meta-RL: the losses a task hands the core, one set per estimator.

The meta-objective of MAML in RL, with support episodes τ sampled from the pre-update policy, is

.. math:: M(\theta) = \mathbb{E}_{\tau \sim \pi_\theta}\big[J(U(\theta, \tau))\big],

where U is the inner update (A2C loss, inner optimiser) and J the expected return. Its gradient
has two terms (Stadie et al. 2018; Foerster et al. 2018; Rothfuss et al. 2019):

.. math:: \nabla M = \mathbb{E}_\tau\big[\partial_\theta U^\top \nabla J(U)\big]
          + \mathbb{E}_\tau\big[J(U)\,\nabla_\theta \log p_\theta(\tau)\big].

The core differentiates the query loss through the inner steps, which gives the first term when
the query loss's gradient is an unbiased policy gradient of J at θ'. The second term, the
*pre-update sampling* term, rewards a pre-adaptation policy for collecting support data that
adapt well; it is what a task adds to its query loss with a "magic box" over the support
log-likelihoods. The estimators (``A2CSettings.meta_gradient``):

``seed``
    TorchOpt's MAML-RL example: the A2C loss (GAE advantages, bootstrapped at the horizon) for
    support and query, no sampling term. Biased: it drops the second term, and its query gradient
    is not an unbiased gradient of J.
``dice``
    Unbiased for the policy's parameters. The query loss is the policy gradient of J with
    undiscounted reward-to-go minus the critic's value (a state baseline, so unbiased) plus the
    critic's regression term, and the DiCE term ``−Σₖ Σᵢ (□(log p_{θₖ}(τₖᵢ)) − 1)·(Ĵ' − bₖᵢ)``
    over the episodes i of every support phase k: value 0, gradient ``−Σ (Ĵ' − bₖᵢ) ∇log p(τₖᵢ)``,
    with □(x) = exp(x − ⊥x) (Foerster et al. 2018) and Ĵ' the mean query return. The baseline
    bₖᵢ of episode i is the mean return of the *other* episodes of its phase: independent of τₖᵢ
    given the phase's policy, so the term stays unbiased, and specific to the task, so it removes
    most of the variance (with one episode per phase, the critic's value of the start state).
    The support loss is the seed's A2C loss: U is unchanged.
``lvc``
    ProMP's low-variance curvature estimator (Rothfuss et al. 2019): the support loss's policy
    term uses □(log π(a|s)) per step, so that its Hessian, which the meta-gradient contains,
    gains the per-step score outer products Σₜ ∇log π ∇log πᵀ Aₜ. Same first derivative (the
    inner update is the seed's), no sampling term in the query loss, which is ``dice``'s policy
    gradient. Low variance, biased.

Gradients through the advantage weights of an inner loss (the critic's values) are not taken:
the advantages are constants of each loss, as in every A2C meta-RL implementation. The exact
oracle (:mod:`rl.oracle`) follows the same convention, so "unbiased" is exact with respect to it.
Reptile does not use the query loss for its update, so no estimator applies to it.
"""

from __future__ import annotations

import torch

from rl.losses import lambda_returns, policy_lookup, trajectory_a2c_loss
from rl.sampler import PolicyFn, Trajectories

__all__ = [
    "ESTIMATORS",
    "log_likelihood",
    "magic_box",
    "policy_gradient_loss",
    "reward_to_go",
    "sampling_record",
    "sampling_term",
    "support_objective",
]

ESTIMATORS = ("seed", "dice", "lvc")


def magic_box(x: torch.Tensor) -> torch.Tensor:
    """DiCE's □(x) = exp(x − ⊥x): value 1, gradient ∇x, and every higher derivative of exp."""
    return torch.exp(x - x.detach())


def reward_to_go(rewards: torch.Tensor) -> torch.Tensor:
    """``[H, ...]`` undiscounted sums of the rewards from step t to the end of the episode."""
    return rewards.flip(0).cumsum(0).flip(0)


def _tables(
    policy: PolicyFn, trajectories: Trajectories, num_states: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Log-probabilities of the actions taken ``[H, T, N]`` and the values of the visited states
    and of the last next-state ``[H + 1, T, N]``, with gradient."""
    logits, values, task = policy_lookup(policy, trajectories, num_states)
    log_probs = torch.log_softmax(logits, dim=-1)[task, trajectories.states, trajectories.actions]
    return log_probs, values, logits[task, trajectories.states]


def log_likelihood(
    policy: PolicyFn, trajectories: Trajectories, num_states: int, *, per_episode: bool = False
) -> torch.Tensor:
    """``[T]`` log-probability of each task's episodes under ``policy`` (``[T, N]``, one per
    episode, with ``per_episode``): the actions' terms, as the dynamics do not depend on the
    parameters."""
    log_probs, _, _ = _tables(policy, trajectories, num_states)
    return log_probs.sum(dim=0) if per_episode else log_probs.sum(dim=(0, 2))


def sampling_record(
    policy: PolicyFn, trajectories: Trajectories, num_states: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """What the dice estimator keeps of one support phase: the episodes' log-likelihoods
    ``[T, N]`` (with their graph) and their baselines ``[T, N]`` (detached): the mean return of
    the other episodes of the phase, or the critic's value of the start state when N = 1."""
    log_probs, values, _ = _tables(policy, trajectories, num_states)
    returns = trajectories.episode_returns().detach()  # [T, N]
    n = returns.shape[1]
    if n > 1:
        baselines = (returns.sum(1, keepdim=True) - returns) / (n - 1)
    else:
        baselines = values[0].detach()  # V(s₀) of every episode: [T, 1]
    return log_probs.sum(dim=0), baselines


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
    trajectories: Trajectories,
    num_states: int,
    *,
    estimator: str,
    gamma: float,
    gae_lambda: float,
    value_coef: float,
    entropy_coef: float,
    per_task: bool,
) -> torch.Tensor:
    """The inner loss: the seed's A2C loss, with LVC's per-step magic box for ``lvc``.

    For ``lvc`` the policy term is ``−⊥A · (□(log π) − 1 + ⊥log π)``: the value and the gradient
    of the seed's ``−⊥A · log π``, with the Hessian of ``−⊥A · □(log π)``.
    """
    if estimator != "lvc":
        return trajectory_a2c_loss(
            policy,
            trajectories,
            num_states,
            gamma=gamma,
            gae_lambda=gae_lambda,
            value_coef=value_coef,
            entropy_coef=entropy_coef,
            per_task=per_task,
        )
    log_probs, values, logits = _tables(policy, trajectories, num_states)
    returns = lambda_returns(trajectories.rewards, values[1:].detach(), gamma, gae_lambda)
    dims = (0, 2) if per_task else tuple(range(log_probs.dim()))
    advantages = returns - values[:-1]
    boxed = magic_box(log_probs) - 1.0 + log_probs.detach()
    loss = -(boxed * advantages.detach()).mean(dims) + value_coef * advantages.pow(2).mean(dims)
    if entropy_coef:
        log_pi = torch.log_softmax(logits, dim=-1)
        loss = loss - entropy_coef * (-(log_pi.exp() * log_pi).sum(-1)).mean(dims)
    return loss


def policy_gradient_loss(
    policy: PolicyFn,
    trajectories: Trajectories,
    num_states: int,
    *,
    gamma: float,
    gae_lambda: float,
    value_coef: float,
    per_task: bool,
) -> torch.Tensor:
    r"""An unbiased policy-gradient loss of the expected (undiscounted) return, per step.

    ``−mean(log π(aₜ|sₜ) · ⊥(Gₜ − V(sₜ)))`` with Gₜ the undiscounted reward-to-go (no
    bootstrap: the episode ends at the horizon), whose gradient is ``−∇J / H`` in expectation
    (V is a state baseline), plus the critic's regression on the seed's λ-returns
    (``value_coef``), which only the critic's parameters feel when the torso is not shared.
    """
    log_probs, values, _ = _tables(policy, trajectories, num_states)
    dims = (0, 2) if per_task else tuple(range(log_probs.dim()))
    rewards = trajectories.rewards
    advantages = reward_to_go(rewards) - values[:-1].detach()
    returns = lambda_returns(rewards, values[1:].detach(), gamma, gae_lambda)
    critic = (returns - values[:-1]).pow(2).mean(dims)
    return -(log_probs * advantages).mean(dims) + value_coef * critic
