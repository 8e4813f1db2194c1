"""Linear solves on tuples of tensors for iMAML's $(I + H/\\lambda)x = v$, with the signature
of ``torchopt.linear_solve``'s solvers (``solve(matvec, b) -> x``): conjugate gradient (positive
definite systems), MINRES (symmetric, possibly indefinite) and CG on the normal equations; and
`checked_solve`, the solve iMAML runs: its residual checked, a failure stopped, skipped or damped."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import torch
import torchopt

from metaopt.options import SOLVERS

Tensors = tuple[torch.Tensor, ...]
Matvec = Callable[[Tensors], Tensors]

__all__ = [
    "DAMPING",
    "SOLVERS",
    "ConjugateGradientError",
    "SolveRecord",
    "checked_solve",
    "minres",
    "norm",
    "solve",
]


def _dot(a: Tensors, b: Tensors) -> float:
    return sum(float((x.detach() * y.detach()).sum()) for x, y in zip(a, b, strict=True))


def norm(a: Tensors) -> float:
    """The Euclidean norm of all the tensors together, as a float (no graph)."""
    return math.sqrt(_dot(a, a))


def _axpy(alpha: float, x: Tensors, y: Tensors) -> Tensors:
    """``alpha * x + y``."""
    return tuple(alpha * a + b for a, b in zip(x, y, strict=True))


def minres(matvec: Matvec, b: Tensors, maxiter: int, rtol: float) -> Tensors:
    """MINRES (Paige & Saunders, 1975) from x₀ = 0: the iterate minimising
    $\\lVert Ax - b\\rVert$ over the Krylov space of A and b, for symmetric A, definite or
    not (CG needs A positive definite; MINRES only nonsingular). One ``matvec`` per iteration;
    stops after ``maxiter`` iterations or once the residual estimate is ≤ ``rtol·‖b‖``. The
    recurrences are those of SciPy's ``minres`` without a preconditioner."""
    eps = float(torch.finfo(b[0].dtype).eps)
    x = tuple(torch.zeros_like(t) for t in b)
    beta1 = norm(b)
    if beta1 == 0:
        return x
    r1 = r2 = y = b
    w = w2 = x
    old_beta, beta, dbar, epsln, phibar, cs, sn = 0.0, beta1, 0.0, 0.0, beta1, -1.0, 0.0
    for it in range(maxiter):
        v = tuple(t / beta for t in y)  # the Lanczos vector
        y = matvec(v)
        if it > 0:
            y = _axpy(-beta / old_beta, r1, y)
        alpha = _dot(v, y)
        y = _axpy(-alpha / beta, r2, y)
        r1, r2 = r2, y
        old_beta, beta = beta, norm(y)
        # Apply the previous Givens rotation, then one that annihilates beta.
        old_eps = epsln
        delta = cs * dbar + sn * alpha
        gbar = sn * dbar - cs * alpha
        epsln, dbar = sn * beta, -cs * beta
        gamma = max(math.hypot(gbar, beta), eps)
        cs, sn = gbar / gamma, beta / gamma
        phi, phibar = cs * phibar, sn * phibar
        w1, w2 = w2, w
        w = tuple((a - old_eps * c - delta * d) / gamma for a, c, d in zip(v, w1, w2, strict=True))
        x = _axpy(phi, w, x)
        if phibar <= rtol * beta1 or beta <= eps * beta1:  # converged, or the Krylov space closed
            break
    return x


def solve(name: str, matvec: Matvec, b: Tensors, maxiter: int) -> Tensors:
    """``maxiter`` iterations of solver ``name`` (one of `SOLVERS`) on ``matvec(x) = b``,
    fewer only once the residual is at machine precision. ``normal_cg`` runs CG on
    $A^2 x = Ab$, the normal equations of a symmetric A: positive semi-definite, the same
    solution when A is nonsingular, two ``matvec`` per iteration and a squared condition number."""
    rtol = float(torch.finfo(b[0].dtype).eps)
    if name == "minres":
        return minres(matvec, b, maxiter, rtol)
    cg = torchopt.linear_solve.solve_cg(maxiter=maxiter, rtol=rtol)
    if name == "normal_cg":
        return cg(lambda x: matvec(matvec(x)), matvec(b))
    return cg(matvec, b)


class ConjugateGradientError(FloatingPointError, RuntimeError):
    """The implicit meta-gradient's linear solve did not reach ``cg_tol``: a numerical failure
    of the run (like a non-finite loss), not a bug; ``metaopt train`` exits 1 with this message."""


@dataclasses.dataclass
class SolveRecord:
    """What one ``meta_backward``'s inner and linear solves reached (the worst over its tasks);
    its ``metrics()`` go into ``metrics.jsonl``.

    Attributes:
        inner_residual: The largest stationarity residual reached (``InnerState.residual``).
        inner_steps: The most inner steps a task took.
        residual: The largest relative residual of a linear solve (of the system solved, damped
            or not).
        iterations: The most matrix-vector products of one linear solve.
        damping: The largest μ added (``on_solve_failure="damp"``; 0: none).
        failed: Whether a solve missed ``cg_tol`` under ``on_solve_failure="skip"``.
    """

    inner_residual: float = 0.0
    inner_steps: int = 0
    residual: float = 0.0
    iterations: int = 0
    damping: float = 0.0
    failed: bool = False

    def metrics(self) -> dict[str, float]:
        return {
            "inner_residual": self.inner_residual,
            "inner_steps_used": float(self.inner_steps),
            "solve_residual": self.residual,
            "solve_iterations": float(self.iterations),
            "solve_damping": self.damping,
            "solve_failed": float(self.failed),
        }


#: ``on_solve_failure="damp"``: the μ tried, smallest first, in $(I + H/\lambda + \mu I)x = v$.
DAMPING = (1e-3, 1e-2, 1e-1, 1.0, 10.0)


_TITLES = {
    "cg": "conjugate gradient",
    "minres": "MINRES",
    "normal_cg": "conjugate gradient on the normal equations",
}


def _attempt(
    solver: str, steps: int, matvec: Matvec, b: Tensors, norm_b: float
) -> tuple[Tensors, float, int]:
    """One solve: the solution, its relative residual (NaN-safe: ``inf`` when not finite)
    and the number of matrix-vector products it took."""
    count = [0]

    def counted(v: Tensors) -> Tensors:
        count[0] += 1
        return matvec(v)

    try:
        x = solve(solver, counted, b, steps)
    except ZeroDivisionError:  # TorchOpt's CG met a zero curvature pᵀAp: A is indefinite
        x = tuple(torch.full_like(t, math.nan) for t in b)
    products = count[0]
    if norm_b == 0:
        return x, 0.0, products
    residual = norm(tuple(ax - bi for ax, bi in zip(matvec(x), b, strict=True))) / norm_b
    return x, residual if math.isfinite(residual) else math.inf, products


def _recorded(
    record: SolveRecord, x: Tensors, residual: float, products: int, mu: float
) -> Tensors:
    record.residual = max(record.residual, residual)
    record.iterations = max(record.iterations, products)
    record.damping = max(record.damping, mu)
    return x


def checked_solve(
    record: SolveRecord,
    matvec: Matvec,
    b: Tensors,
    *,
    solver: str,
    steps: int,
    tol: float,
    on_failure: str,
) -> Tensors:
    """``steps`` iterations of ``solver`` on ``matvec(x) = b`` (as the paper: a fixed budget;
    fewer only once the residual is at machine precision), checked: the relative residual of this
    system (not of normal equations) must be ≤ ``tol``; what happens when it is not is
    ``on_failure``'s (``"stop"``, ``"skip"`` or ``"damp"``, as `IMAML`'s ``on_solve_failure``).
    ``record`` keeps the worst residual, the products, μ and whether the batch is to be dropped.

    Raises:
        ConjugateGradientError: under ``"stop"``, or under ``"damp"`` with every μ of `DAMPING`.
    """
    norm_b = norm(b)
    x, residual, products = _attempt(solver, steps, matvec, b, norm_b)
    if residual <= tol or norm_b == 0:
        return _recorded(record, x, residual, products, 0.0)
    if on_failure == "damp":
        for mu in DAMPING:

            def damped(v: Tensors, mu: float = mu) -> Tensors:
                return tuple(a + mu * t for a, t in zip(matvec(v), v, strict=True))

            y, damped_residual, more = _attempt(solver, steps, damped, b, norm_b)
            products += more
            if damped_residual <= tol:
                return _recorded(record, y, damped_residual, products, mu)
    if on_failure == "skip":
        record.failed = True
        return _recorded(record, tuple(torch.zeros_like(t) for t in b), residual, products, 0.0)
    hint = "try solver='minres' (I + H/λ need not be positive definite), " if solver == "cg" else ""
    damped_too = (
        f" (and with every μ of {', '.join(map(str, DAMPING))} added)"
        if on_failure == "damp"
        else ""
    )
    raise ConjugateGradientError(
        f"IMAML: {_TITLES[solver]} did not converge: relative residual "
        f"{residual:.3g} > cg_tol={tol:g} after cg_steps={steps}{damped_too}. "
        f"Raise cg_steps, raise reg (λ; CG needs H's eigenvalues above −λ), {hint}solve the "
        "inner problem further (inner_tol, inner_steps), or loosen cg_tol"
    )
