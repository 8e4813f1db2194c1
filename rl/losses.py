r"""λ-returns (GAE) and the advantage actor-critic loss, as pure functions.

λ-return (Sutton & Barto 2018, §12.1) of a trajectory truncated at step H, computed backwards:

$$
G^\lambda_t = r_t + \gamma_t\big[(1-\lambda)\,V(s_{t+1}) + \lambda\,G^\lambda_{t+1}\big],
\qquad G^\lambda_{H} := V(s_H),
$$

so the last step bootstraps from the value of the last next-state (truncation, not
termination; a terminal step would carry $\gamma_t = 0$). The advantage
$A_t = G^\lambda_t - V(s_t) = \sum_{k \ge 0} (\gamma\lambda)^k \delta_{t+k}$ with
$\delta_t = r_t + \gamma V(s_{t+1}) - V(s_t)$ is exactly generalised advantage estimation,
GAE(γ, λ) (Schulman et al. 2016, "High-Dimensional Continuous Control Using Generalized
Advantage Estimation", arXiv:1506.02438). Special cases: λ = 0 gives the one-step TD target
$r_t + \gamma V(s_{t+1})$; λ = 1 the Monte-Carlo return
$\sum_{k<H-t} \gamma^k r_{t+k} + \gamma^{H-t} V(s_H)$.

A2C loss (Mnih et al. 2016, "Asynchronous Methods for Deep Reinforcement Learning"), averaged
over all steps, with the advantage detached in the policy term:

$$
\mathcal{L} = -\overline{\log\pi(a_t\mid s_t)\,\mathrm{sg}[A_t]}
+ c_v\,\overline{A_t^2} - c_e\,\overline{\mathcal{H}[\pi(\cdot\mid s_t)]}.
$$
"""

from __future__ import annotations

import functools

import torch

__all__ = [
    "a2c_loss",
    "a2c_objective",
    "lambda_returns",
    "masked_mean",
]


def lambda_returns(
    rewards: torch.Tensor,
    next_values: torch.Tensor,
    discounts: torch.Tensor | float,
    lam: float,
) -> torch.Tensor:
    r"""TD(λ) returns $G^\lambda_t$, time-major (see the module docstring for the formula).

    Args:
        rewards: ``[H, ...]`` rewards $r_t$.
        next_values: ``[H, ...]`` values $V(s_{t+1})$ of the next states; the last entry
            bootstraps the return at the horizon. Pass them detached: they are targets.
        discounts: $\gamma_t$, a float or a tensor broadcastable to ``rewards``
            (γ, or 0 after a terminal step).
        lam: λ in [0, 1]; 0 is one-step TD, 1 Monte Carlo with a bootstrapped tail.

    Returns:
        ``[H, ...]`` λ-returns. Subtract $V(s_t)$ for the GAE(γ, λ) advantages.
    """
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"lam (GAE λ) must be in [0, 1], got {lam!r}")
    if rewards.shape != next_values.shape:
        raise ValueError(
            f"rewards {tuple(rewards.shape)} and next_values {tuple(next_values.shape)} differ"
        )
    if isinstance(discounts, int | float):
        return _lambda_returns_constant(rewards, next_values, float(discounts), lam)
    discounts = torch.as_tensor(discounts, dtype=rewards.dtype, device=rewards.device)
    discounts = discounts.expand_as(rewards)
    returns = torch.empty_like(rewards)
    following = next_values[-1]  # G_H := V(s_H), the bootstrap at truncation
    for t in reversed(range(rewards.shape[0])):
        following = rewards[t] + discounts[t] * ((1.0 - lam) * next_values[t] + lam * following)
        returns[t] = following
    return returns


def _lambda_returns_constant(
    rewards: torch.Tensor, next_values: torch.Tensor, gamma: float, lam: float
) -> torch.Tensor:
    r"""The same recursion for a constant γ, unrolled into one matrix product.

    $G_t = \sum_{k=t}^{H-1} (\gamma\lambda)^{k-t} c_k$ with
    $c_k = r_k + \gamma(1-\lambda) V(s_{k+1})$, plus $\gamma\lambda V(s_H)$ in
    $c_{H-1}$ for the bootstrap. A meta-iteration evaluates hundreds of losses, and one
    product costs a tenth of the H-step loop.
    """
    horizon = rewards.shape[0]
    targets = rewards + gamma * (1.0 - lam) * next_values
    bootstrap = torch.zeros_like(targets)
    bootstrap[-1] = gamma * lam * next_values[-1]
    weights = _discount_matrix(horizon, gamma * lam, rewards.dtype, rewards.device)
    flat = (targets + bootstrap).reshape(horizon, -1)
    return (weights @ flat).reshape(rewards.shape)


@functools.lru_cache(maxsize=32)
def _discount_matrix(
    horizon: int, rate: float, dtype: torch.dtype, device: torch.device
) -> torch.Tensor:
    """``[H, H]`` upper-triangular matrix of ``rate ** (k − t)`` for ``k >= t``."""
    steps = torch.arange(horizon, dtype=torch.float64)
    power = steps[None, :] - steps[:, None]
    weights = torch.where(power >= 0, rate ** power.clamp(min=0), 0.0)
    return weights.to(dtype=dtype, device=device)


def a2c_loss(
    logits: torch.Tensor,
    actions: torch.Tensor,
    values: torch.Tensor,
    returns: torch.Tensor,
    value_coef: float = 0.5,
    entropy_coef: float = 0.0,
    dims: tuple[int, ...] | None = None,
) -> torch.Tensor:
    """Advantage actor-critic loss of a categorical policy (`a2c_objective` of its
    log-probabilities), averaged over every step of every trajectory.

    Args:
        logits: ``[..., A]`` action logits at the visited states.
        actions: ``[...]`` actions taken.
        values: ``[...]`` $V(s_t)$, with gradient.
        returns: ``[...]`` λ-returns (targets, no gradient).
        value_coef: $c_v$ (the MAML-RL example's 0.5).
        entropy_coef: $c_e$, entropy bonus (default off, as in the MAML-RL example).
        dims: Dimensions of ``values`` to average over (default: all, a scalar loss); e.g.
            ``(0, 2)`` of ``[H, T, N]`` gives one loss per task.
    """
    log_probs = torch.log_softmax(logits, dim=-1)
    taken = log_probs.gather(-1, actions.unsqueeze(-1)).squeeze(-1)
    entropy = -(log_probs.exp() * log_probs).sum(-1) if entropy_coef else None
    return a2c_objective(taken, values, returns, value_coef, entropy, entropy_coef, dims)


def _kept(x: torch.Tensor, dims: tuple[int, ...]) -> list[int]:
    """The shape of ``x`` with ``dims`` reduced to size 1 (to broadcast a reduction back)."""
    return [1 if d in dims else size for d, size in enumerate(x.shape)]


def masked_mean(
    x: torch.Tensor, dims: tuple[int, ...], mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean of ``x`` over ``dims``, counting only the entries where ``mask`` is 1 (steps inside
    an episode that ended early); ``mask=None`` is the plain mean."""
    if mask is None:
        return x.mean(dims)
    return (x * mask).sum(dims) / mask.sum(dims).clamp(min=1)


def a2c_objective(
    log_probs: torch.Tensor,
    values: torch.Tensor,
    returns: torch.Tensor,
    value_coef: float = 0.5,
    entropy: torch.Tensor | None = None,
    entropy_coef: float = 0.0,
    dims: tuple[int, ...] | None = None,
    mask: torch.Tensor | None = None,
    *,
    normalize: bool = False,
    baseline: torch.Tensor | None = None,
) -> torch.Tensor:
    """The A2C loss of any policy, from the log-likelihoods of the actions taken: a
    log-probability (discrete actions) or a log-density (continuous ones).

    ``advantage = returns − values``; the policy term uses it detached (a score-function
    estimate), the value term is its square, so the critic regresses on the λ-returns.

    Args:
        log_probs: ``[...]`` log π(a_t | s_t) of the actions taken, with gradient.
        values: ``[...]`` $V(s_t)$, with gradient.
        returns: ``[...]`` λ-returns (targets, no gradient).
        value_coef: $c_v$.
        entropy: ``[...]`` entropy of π(· | s_t); needed when ``entropy_coef`` is not 0.
        entropy_coef: $c_e$.
        dims: Dimensions to average over (default: all, a scalar loss).
        mask: ``[...]`` 1 on the steps to count, 0 after an episode ended (default: all).
        normalize: Standardise the advantages of the policy term over ``dims`` (mean 0, standard
            deviation 1 over the counted steps): the step an inner SGD update takes then no
            longer scales with the size of the returns (tens, in 2-D navigation).
        baseline: ``[...]`` what the policy term's advantages ``returns − baseline`` subtract
            instead of ``values`` (no gradient; the critic's term still uses ``values``).
    """
    dims = tuple(range(values.dim())) if dims is None else dims
    advantages = returns - values
    weights = advantages.detach() if baseline is None else (returns - baseline).detach()
    if normalize:
        centred = weights - masked_mean(weights, dims, mask).view(_kept(weights, dims))
        scale = masked_mean(centred.pow(2), dims, mask).sqrt().view(_kept(weights, dims))
        weights = centred / (scale + 1e-8)
    policy_term = -masked_mean(log_probs * weights, dims, mask)
    loss = policy_term + value_coef * masked_mean(advantages.pow(2), dims, mask)
    if entropy_coef:
        if entropy is None:
            raise ValueError("a2c_objective: entropy_coef is not 0 but no entropy was given")
        loss = loss - entropy_coef * masked_mean(entropy, dims, mask)
    return loss
