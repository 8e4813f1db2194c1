r"""A trust-region outer step (TRPO, Schulman et al. 2015), for any objective that can say how far
its distributions moved.

The meta-RL outer step of MAML's RL experiments (Finn et al. 2017, §5.3) and of pytorch-maml-rl.
Given the gradient $g$ of a loss $L$ at $\theta_0$ and a divergence
$D(\theta) = \overline{\mathrm{KL}}(\pi_{\theta_0} \,\|\, \pi_\theta)$, which is 0 with zero
gradient at $\theta_0$, the step solves

$$
\min_\delta\; g^\top\delta \quad\text{s.t.}\quad \tfrac12\,\delta^\top F\delta \le
\epsilon, \qquad F = \nabla^2 D(\theta_0),
$$

approximately: $s \approx F^{-1} g$ by conjugate gradients on $F + \lambda I$ (only
products $Fv$, each a second backward pass through $\nabla D$), the largest step
$\delta = -\sqrt{2\epsilon / s^\top F s}\; s$ in that metric, then a backtracking line search
that takes the first of $\delta, r\delta, r^2\delta, \dots$ whose loss is lower than at
$\theta_0$ and whose divergence is at most $\epsilon$ (none: no step).

Nothing here knows what is being learned: a `TrustRegionProblem` evaluates the loss and the
divergence at the parameters' current values, and the step moves the parameters in place. The
parameters the divergence does not depend on (an RL critic's) are left to the caller, with their
gradients untouched.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch

__all__ = [
    "TrustRegionProblem",
    "TrustRegionSettings",
    "TrustRegionStep",
    "conjugate_gradient",
    "hessian_vector_product",
    "trust_region_step",
]


class TrustRegionProblem(Protocol):
    """What a trust-region step needs of an objective, at the parameters' current values."""

    def evaluate(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(surrogate, divergence)``: the loss to lower (a scalar whose gradient at the start is
        the ``.grad`` given) and the divergence. Called under ``torch.no_grad()``: no graph to
        the parameters is needed (one inside, an inner step's, may still be built with
        ``torch.enable_grad()``)."""
        ...

    def divergence(self) -> torch.Tensor:
        """The scalar divergence from the start's distributions, differentiable twice with
        respect to the parameters."""
        ...


@dataclass(frozen=True)
class TrustRegionSettings:
    """The step's hyper-parameters (pytorch-maml-rl's 2-D navigation values by default).

    Attributes:
        max_kl: ε, the largest divergence a step may reach.
        cg_steps: Conjugate-gradient iterations of the solve $(F + \\lambda I)s = g$.
        damping: λ, added to the Fisher-vector products.
        backtracks: Line-search candidates tried at most.
        ratio: r, each candidate's step is this times the previous one's.
    """

    max_kl: float = 0.01
    cg_steps: int = 10
    damping: float = 1e-5
    backtracks: int = 15
    ratio: float = 0.8


@dataclass(frozen=True)
class TrustRegionStep:
    """What a step did (logged each iteration).

    Attributes:
        accepted: Whether a candidate was taken (else the parameters are unchanged).
        fraction: The step taken as a fraction of the full one (0 when none was).
        kl: The divergence at the new parameters.
        improvement: The surrogate's decrease (start minus new; ≥ 0 when accepted).
        backtracks: Candidates rejected before the one taken (all of them when none was).
    """

    accepted: bool
    fraction: float
    kl: float
    improvement: float
    backtracks: int

    def metrics(self) -> dict[str, float]:
        """The row ``metrics.jsonl`` gets."""
        return {
            "trpo_fraction": self.fraction,
            "trpo_kl": self.kl,
            "trpo_improvement": self.improvement,
            "trpo_backtracks": float(self.backtracks),
        }


def conjugate_gradient(
    matvec: Callable[[torch.Tensor], torch.Tensor],
    b: torch.Tensor,
    steps: int,
    tolerance: float = 1e-10,
) -> torch.Tensor:
    """``steps`` iterations of conjugate gradients on ``A x = b`` from x = 0 (A symmetric positive
    definite, given by ``matvec``); stops early once the squared residual is below ``tolerance``."""
    x = torch.zeros_like(b)
    r = b.clone()
    p = b.clone()
    rr = r.dot(r)
    for _ in range(steps):
        if rr.item() < tolerance:
            break
        ap = matvec(p)
        alpha = rr / p.dot(ap)
        x = x + alpha * p
        r = r - alpha * ap
        rr_new = r.dot(r)
        p = r + (rr_new / rr) * p
        rr = rr_new
    return x


def _flat(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


def _assign(params: Sequence[torch.Tensor], flat: torch.Tensor) -> None:
    with torch.no_grad():
        offset = 0
        for p in params:
            p.copy_(flat[offset : offset + p.numel()].view_as(p))
            offset += p.numel()


def hessian_vector_product(
    gradient: Sequence[torch.Tensor],
    params: Sequence[torch.Tensor],
    damping: float = 0.0,
    reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> Callable[[torch.Tensor], torch.Tensor]:
    """``v -> (H + damping I) v`` for the Hessian H of the function whose ``gradient`` with
    respect to ``params`` (built with ``create_graph=True``) is given; vectors are flat, in the
    order of ``params``. Each product is one backward pass through the gradient's graph. With
    ``reduce`` (data parallelism: `trust_region_step`), H v is this process's share, which
    ``reduce`` sums over the processes before the damping is added."""
    flat = _flat(gradient)

    def product(v: torch.Tensor) -> torch.Tensor:
        hv = _flat(torch.autograd.grad(flat.dot(v), params, retain_graph=True))
        return (hv if reduce is None else reduce(hv)) + damping * v

    return product


def trust_region_step(
    params: Sequence[torch.nn.Parameter],
    problem: TrustRegionProblem,
    settings: TrustRegionSettings,
    reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> TrustRegionStep:
    """One TRPO step of the ``params`` the divergence depends on, from their ``.grad``.

    The parameters that ``problem.divergence()`` reaches are moved in place (or left as they were
    when the line search accepts no candidate) and their ``.grad`` is cleared; the others keep
    their ``.grad`` and values, for the caller's own optimiser.

    With data parallelism (each process holding some of the tasks, ``.grad`` already summed over
    the processes), ``reduce`` sums a quantity over the processes, each weighted by its share of
    the tasks: it is applied to the divergence's Hessian-vector products and to the surrogate and
    divergence the line search compares, so every process computes the same direction, tries the
    same candidates, takes the same decisions and ends at the same parameters as one process
    holding every task (`metaopt.training.distributed.task_weighted_sum`), up to rounding:
    the sums run in another order, and a few conjugate-gradient iterations on a nearly singular
    Fisher matrix amplify that (float32 products equal to 1e-7 gave directions equal to 1e-3 on
    nav2d). ``None``: this process holds every task.

    Raises:
        ValueError: when no parameter with a gradient reaches the divergence.
    """
    divergence = problem.divergence()
    first = torch.autograd.grad(divergence, params, create_graph=True, allow_unused=True)
    region = [
        i
        for i, (p, d) in enumerate(zip(params, first, strict=True))
        if d is not None and p.grad is not None
    ]
    if not region:
        raise ValueError("trust_region_step: the divergence reaches no parameter with a gradient")
    moved = [params[i] for i in region]
    g = _flat([p.grad for p in moved])  # type: ignore[misc]
    fvp = hessian_vector_product([first[i] for i in region], moved, settings.damping, reduce)
    s = conjugate_gradient(fvp, g.detach(), settings.cg_steps)
    curvature = s.dot(fvp(s)).item()
    del first, fvp, divergence  # the divergence's graph
    combine = reduce if reduce is not None else (lambda value: value)

    def evaluate() -> tuple[float, float]:
        with torch.no_grad():
            loss, kl = combine(torch.stack([value.detach() for value in problem.evaluate()]))
        return loss.item(), kl.item()

    start = _flat([p.detach() for p in moved]).clone()
    for p in moved:
        p.grad = None
    if not curvature > 0:  # a zero gradient, or a non-finite one: no step
        return TrustRegionStep(False, 0.0, 0.0, 0.0, 0)
    full = -((2 * settings.max_kl / curvature) ** 0.5) * s
    before = evaluate()[0]
    fraction = 1.0
    for tried in range(settings.backtracks):
        _assign(moved, start + fraction * full)
        loss, kl = evaluate()
        if loss < before and kl <= settings.max_kl:
            return TrustRegionStep(True, fraction, kl, before - loss, tried)
        fraction *= settings.ratio
    _assign(moved, start)
    return TrustRegionStep(False, 0.0, 0.0, 0.0, settings.backtracks)
