"""Linear solves on tuples of tensors for iMAML's $(I + H/\\lambda)x = v$, with the signature
of ``torchopt.linear_solve``'s solvers (``solve(matvec, b) -> x``): conjugate gradient (positive
definite systems), MINRES (symmetric, possibly indefinite) and CG on the normal equations."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torchopt

from metaopt.options import SOLVERS

Tensors = tuple[torch.Tensor, ...]
Matvec = Callable[[Tensors], Tensors]

__all__ = ["SOLVERS", "minres", "norm", "solve"]


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
