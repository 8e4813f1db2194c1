"""iMAML's regularised inner problem $\\mathcal{L}(\\phi) + \frac{\\lambda}{2}\\lVert\\phi -
\theta\rVert^2$ as pure functions: the proximal gradient transformation, its solve to a stated
stationarity (`proximal_path`), and the network linearised around the solution, whose loss has the
Gauss-Newton matrix as its Hessian."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any, NamedTuple

import torch
from torchopt.base import GradientTransformation

from metaopt.task import BatchedForward

Tensors = tuple[torch.Tensor, ...]

__all__ = ["InnerState", "ProximalState", "linearised", "proximal", "proximal_path"]


class ProximalState(NamedTuple):
    """The anchor θ the inner problem is regularised towards, and the inner optimiser's state."""

    anchor: Tensors
    inner: Any


def proximal(inner: GradientTransformation, reg: float) -> GradientTransformation:
    """``inner`` applied to the gradient of $\\mathcal{L}(\\phi) + \\frac{\\lambda}{2}
    \\lVert\\phi - \\theta\\rVert^2$: the gradient plus $\\lambda(\\phi - \\theta)$, with θ
    the parameters the first ``init`` saw (a constant: iMAML's inner loop keeps no graph)."""

    def init(params: Sequence[torch.Tensor]) -> ProximalState:
        return ProximalState(tuple(p.detach() for p in params), inner.init(params))

    def update(
        grads: Sequence[torch.Tensor | None],
        state: ProximalState,
        *,
        params: Sequence[torch.Tensor],
        inplace: bool = True,
    ) -> tuple[tuple[torch.Tensor | None, ...], ProximalState]:
        if any(g is not None and g.is_sparse for g in grads):
            raise TypeError(
                "IMAML cannot take sparse gradients (an nn.Embedding with sparse=True?): its "
                "implicit solve differentiates the support loss with torch.func, which does not "
                "support them; use sparse=False"
            )
        pulled = tuple(
            None if g is None else g + reg * (p.detach() - a)
            for g, p, a in zip(grads, params, state.anchor, strict=True)
        )
        updates, inner_state = inner.update(pulled, state.inner, params=params, inplace=inplace)
        return updates, ProximalState(state.anchor, inner_state)

    return GradientTransformation(init, update)  # type: ignore[arg-type]


class InnerState(NamedTuple):
    r"""One point of the inner solve, every tensor with a leading task axis B.

    Attributes:
        params: φ, the adapted parameters.
        before: Support losses at θ, ``[B]`` (detached).
        residual: The stationarity residual $\lVert\nabla L(\phi) + \lambda(\phi - \theta)\rVert
            / \lVert\nabla L(\theta)\rVert$, ``[B]``.
        steps: Gradient evaluations after the one at θ (a rejected step counts).
    """

    params: Tensors
    before: torch.Tensor
    residual: torch.Tensor
    steps: int


def _norms(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """Per-task Euclidean norms ``[B]`` of tensors stacked on a leading task axis."""
    return torch.stack([t.reshape(t.shape[0], -1).pow(2).sum(1) for t in tensors]).sum(0).sqrt()


def _per_task(scale: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """``scale`` (``[B]``) broadcast over task-stacked ``t``."""
    return scale.reshape(-1, *([1] * (t.dim() - 1))) * t


def _pick(keep: torch.Tensor, new: Tensors, old: Tensors) -> Tensors:
    return tuple(
        torch.where(keep.reshape(-1, *([1] * (n.dim() - 1))), n, o)
        for n, o in zip(new, old, strict=True)
    )


def proximal_path(
    objective: Callable[[Tensors], torch.Tensor],
    anchor: Tensors,
    reg: float,
    *,
    lr: float,
    steps: int,
    tol: float,
    power_iterations: int,
    momentum: bool = False,
    each: bool = False,
) -> Iterator[InnerState]:
    r"""Gradient descent on $L_b(\phi_b) + \frac{\lambda}{2}\lVert\phi_b - \theta_b\rVert^2$
    for every task b at once, yielding the state after 0, 1, ..., ``steps`` steps.

    Task b's step size is ``lr``, or with ``power_iterations`` > 0 the smaller
    $\min(\text{lr}, 1/(\lambda + \hat L_b))$, $\hat L_b$ the largest absolute eigenvalue of
    $L_b$'s Hessian at θ estimated by that many power iterations (from the gradient's
    direction: no randomness), so that the step is stable for the regularised problem. A
    step that raises a task's regularised loss is undone and that task's step size halved. Once
    every task's residual is at most ``tol`` the state is yielded unchanged (no more work);
    with ``each``, a task stops there on its own, as it would if solved alone (the loop engine),
    while the others go on.

    With ``momentum``, each step is Nesterov's accelerated one for a strongly convex problem,
    $\phi_{k+1} = \phi_k - \eta g_k + \beta\,[(\phi_k - \phi_{k-1}) - \eta(g_k - g_{k-1})]$
    with g the regularised gradient, η the task's step size and
    $\beta = (\sqrt\kappa - 1)/(\sqrt\kappa + 1)$, $\kappa = 1/(\lambda\eta)$ (the
    regularised problem's condition number when η = 1/(λ + L)): the error shrinks by about
    $1 - 1/\sqrt\kappa$ a step instead of $1 - 1/\kappa$. The accepted points still never
    raise the regularised loss: a step that does is undone and the momentum restarted from
    there (O'Donoghue & Candès's function restart); only a plain step that does halves η.

    Args:
        objective: Per-task support losses ``[B]`` of task-stacked parameters.
        anchor: θ, one copy per task (detached).
        reg: λ > 0.
        lr: The largest step size.
        steps: The most steps.
        tol: The stationarity residual at which a task counts as solved.
        power_iterations: Hessian-vector products of the curvature estimate.
        momentum: Nesterov's acceleration, restarted where a step raises the loss.
        each: Each task stops once its own residual is at most ``tol``.
    """

    def evaluate(point: Tensors, graph: bool) -> tuple[Tensors, torch.Tensor, Tensors]:
        point = tuple(p.detach().requires_grad_() for p in point)
        losses = objective(point)
        grads = torch.autograd.grad(losses.sum(), point, create_graph=graph)
        return point, losses, grads

    point, losses, grads = evaluate(anchor, power_iterations > 0)
    before = losses.detach()
    rate = torch.full_like(before, lr)
    if power_iterations:
        vector = tuple(_per_task(1 / _norms(grads).clamp_min(1e-30), g.detach()) for g in grads)
        for _ in range(power_iterations):
            product = torch.autograd.grad(grads, point, vector, retain_graph=True)
            curvature = _norms(product)
            vector = tuple(_per_task(1 / curvature.clamp_min(1e-30), h) for h in product)
        rate = torch.minimum(rate, 1 / (reg + curvature))
    phi = tuple(p.detach() for p in point)
    pulled = tuple(g.detach() for g in grads)  # the regularised gradient (φ = θ here)
    scale = _norms(pulled)
    value = before
    slack = 8 * torch.finfo(before.dtype).eps
    residual = torch.where(scale > 0, 1.0, 0.0).to(before.dtype)
    used = 0
    # The momentum term of the next step, (φ_k − φ_{k−1}) − η(g_k − g_{k−1}): zero at the start
    # and after a restart; `moving` says which tasks' steps carry one.
    drift = tuple(torch.zeros_like(p) for p in phi)
    moving = torch.zeros_like(before, dtype=torch.bool)
    yield InnerState(phi, before, residual, used)
    for _ in range(steps):
        if bool((residual <= tol).all()):
            yield InnerState(phi, before, residual, used)
            continue
        trial = tuple(p - _per_task(rate, g) for p, g in zip(phi, pulled, strict=True))
        if momentum:
            root = (1 / (reg * rate)).clamp_min(1).sqrt()  # √κ
            beta = torch.where(moving, (root - 1) / (root + 1), 0.0)
            trial = tuple(t + _per_task(beta, d) for t, d in zip(trial, drift, strict=True))
        _, losses, new_grads = evaluate(trial, False)
        used += 1
        distance = _norms([t - a for t, a in zip(trial, anchor, strict=True)])
        new_value = losses.detach() + reg / 2 * distance**2
        keep = new_value <= value + slack * value.abs()
        solved = residual <= tol if each else torch.zeros_like(keep)
        keep = keep & ~solved
        new_pulled = tuple(
            g.detach() + reg * (t - a) for g, t, a in zip(new_grads, trial, anchor, strict=True)
        )
        if momentum:
            step = tuple(
                t - p - _per_task(rate, n - g)
                for t, p, n, g in zip(trial, phi, new_pulled, pulled, strict=True)
            )
            drift = _pick(keep, step, tuple(torch.zeros_like(d) for d in drift))
            restarted = moving & ~keep  # a rejected step with momentum: restart, keep η
            moving = keep
        else:
            restarted = torch.zeros_like(keep)
        phi = _pick(keep, trial, phi)
        pulled = _pick(keep, new_pulled, pulled)
        value = torch.where(keep, new_value, value)
        rate = torch.where(keep | restarted | solved, rate, rate / 2)
        residual = _norms(pulled) / scale.clamp_min(torch.finfo(scale.dtype).tiny)
        residual = torch.where(scale > 0, residual, 0.0)
        yield InnerState(phi, before, residual, used)


def linearised(
    forward_of: Callable[[Tensors, dict[str, torch.Tensor]], BatchedForward],
    at: tuple[Tensors, dict[str, torch.Tensor]],
    anchor: tuple[Tensors, dict[str, torch.Tensor]],
) -> BatchedForward:
    """The network linearised in its parameters around ``anchor`` (φ*, θ), evaluated at ``at``:
    $f(x) \\approx f_*(x) + J_*\\,(\\text{at} - \\text{anchor})$. The Hessian of a loss of these
    outputs is the Gauss-Newton matrix $J_*^\\top \\nabla^2_f\\ell\\, J_*$ and its gradient at the
    anchor is the loss's own, so an optimality condition built from it has the same root.

    ``forward_of(φ, θ)`` is the network at those parameters, called with whatever arguments the
    linearised one is called with; its outputs may be a tensor or a tuple of tensors."""
    phi, th = at
    phi0, th0 = anchor

    def forward(*args: Any) -> Any:
        def outputs(p: Tensors, t: dict[str, torch.Tensor]) -> Any:
            return forward_of(p, t)(*args)

        tangent = (
            tuple(a - b for a, b in zip(phi, phi0, strict=True)),
            {n: th[n] - th0[n] for n in th0},
        )
        value, change = torch.func.jvp(outputs, (phi0, th0), tangent)  # type: ignore[misc]
        if isinstance(value, tuple):
            return tuple(v.detach() + c for v, c in zip(value, change, strict=True))
        return value.detach() + change

    return forward
