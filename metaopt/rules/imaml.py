"""iMAML's rule: the inner optimiser on the regularised support loss (or `proximal_path`, solved
to a stationarity tolerance), and the implicit outer rule: the adapted parameters tied to θ by the
implicit function theorem, whose backward solves $(I + H/\\lambda)x = v$ (`checked_solve`).

The rule is pure: it sees the support and query losses as functions of tensors, which
`metaopt.algorithms.imaml` builds for the vectorised and the loop engine."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
import torchopt
from torchopt.base import GradientTransformation

from metaopt.options import (
    ALGORITHM_LOOKS,
    CURVATURES,
    SOLVE_FAILURE_POLICIES,
    check_choice,
    check_int,
    check_real,
)
from metaopt.rules.base import Rule
from metaopt.rules.linsolve import SOLVERS, SolveRecord, checked_solve
from metaopt.rules.proximal import InnerState, proximal, proximal_path

__all__ = ["IMAMLRule", "Losses"]

Tensors = tuple[torch.Tensor, ...]
#: ``losses(phi, theta, query)``: the support loss summed over the tasks (``query=False``) or the
#: per-task query losses, at the adapted parameters ``phi`` and the initialisation ``theta``.
Losses = Callable[[Tensors, dict[str, torch.Tensor], bool], torch.Tensor]


class IMAMLRule(Rule):
    """iMAML (Rajeswaran et al., 2019): steps on $\\mathcal{L}^s(\\phi) + \\frac\\lambda2
    \\lVert\\phi-\\theta\\rVert^2$ without a graph, and the implicit meta-gradient
    $(I + H/\\lambda)^{-1}\\nabla\\mathcal{L}^q$; its options are
    [`IMAML`][metaopt.IMAML]'s."""

    name = "imaml"
    label, color = ALGORITHM_LOOKS[name]
    outer = "implicit"
    second_order = False
    compiles = False

    def __init__(
        self,
        reg: float = 1.0,
        *,
        solver: str = "cg",
        on_solve_failure: str = "stop",
        cg_steps: int = 10,
        cg_tol: float = 1e-3,
        curvature: str = "hessian",
        inner_tol: float = 0.0,
        power_iterations: int = 0,
        inner_momentum: bool = False,
    ) -> None:
        self.reg = check_real("reg", reg, low=0, low_open=True)
        self.solver = check_choice("solver", solver, SOLVERS)
        self.cg_steps = check_int("cg_steps", cg_steps, 1)
        self.cg_tol = check_real("cg_tol", cg_tol, low=0, low_open=True)
        self.inner_tol = check_real("inner_tol", inner_tol, low=0)
        self.power_iterations = check_int("power_iterations", power_iterations, 0)
        if not isinstance(inner_momentum, bool):
            raise TypeError(f"inner_momentum must be True or False; got {inner_momentum!r}")
        self.inner_momentum = inner_momentum
        self.on_solve_failure = check_choice(
            "on_solve_failure", on_solve_failure, SOLVE_FAILURE_POLICIES
        )
        self.curvature = check_choice("curvature", curvature, CURVATURES)

    def options(self) -> dict[str, Any]:
        return {
            "reg": self.reg,
            "cg_steps": self.cg_steps,
            "cg_tol": self.cg_tol,
            "solver": self.solver,
            "inner_tol": self.inner_tol,
            "power_iterations": self.power_iterations,
            "inner_momentum": self.inner_momentum,
            "on_solve_failure": self.on_solve_failure,
            "curvature": self.curvature,
        }

    @property
    def solves_inner(self) -> bool:
        """Whether the inner loop is `proximal_path` (a tolerance, a curvature-tied step or
        momentum)."""
        return self.inner_tol > 0 or self.power_iterations > 0 or self.inner_momentum

    def transform(
        self, inner_optimizer: str, inner_lr: float, learned: Sequence[torch.Tensor]
    ) -> GradientTransformation:
        return proximal(super().transform(inner_optimizer, inner_lr, learned), self.reg)

    def path(
        self,
        objective: Callable[[Tensors], torch.Tensor],
        anchor: Tensors,
        steps: int,
        inner_lr: float,
        tol: float | None = None,
        each: bool = False,
    ) -> Iterator[InnerState]:
        """`proximal_path` with this rule's λ, tolerance (or ``tol``), power iterations and
        momentum; ``each``: each task stops at the tolerance on its own."""
        return proximal_path(
            objective,
            anchor,
            self.reg,
            lr=inner_lr,
            steps=steps,
            tol=self.inner_tol if tol is None else tol,
            power_iterations=self.power_iterations,
            momentum=self.inner_momentum,
            each=each,
        )

    def implicit(
        self,
        solution: Tensors,
        theta: dict[str, torch.Tensor],
        names: list[str],
        losses: Losses,
        record: SolveRecord,
    ) -> Tensors:
        """The adapted parameters ``solution`` (φ*, detached) as a function of θ whose backward
        is the implicit one: $v \\mapsto (I + H/\\lambda)^{-1} v$ for θ of the adapted
        parameters, and the cross term for the others."""
        reg = self.reg

        keys = list(theta)  # custom_root differentiates a tuple of tensors, not a dict

        def optimality(phi: Tensors, values: Tensors) -> Tensors:
            th = dict(zip(keys, values, strict=True))
            grads = torch.func.grad(lambda p: losses(p, th, False))(phi)
            return tuple(p - th[n] + g / reg for p, n, g in zip(phi, names, grads, strict=True))

        solve = functools.partial(self.solve, record)

        @torchopt.diff.implicit.custom_root(optimality, argnums=1, solve=solve)
        def solve_inner(phi: Tensors, values: Tensors) -> Tensors:
            return solution

        return solve_inner(solution, tuple(theta.values()))  # type: ignore[return-value]

    def solve(
        self, record: SolveRecord, matvec: Callable[[Tensors], Tensors], b: Tensors
    ) -> Tensors:
        """`checked_solve` with this rule's solver, budget, tolerance and failure policy."""
        policy = {"solver": self.solver, "on_failure": self.on_solve_failure}
        return checked_solve(record, matvec, b, steps=self.cg_steps, tol=self.cg_tol, **policy)

    def describe(
        self, inner_optimizer: str, inner_lr: float, learned: Sequence[torch.Tensor]
    ) -> dict[str, Any]:
        options = self.options()
        del options["cg_tol"]  # as eval.json has always listed them
        return {**super().describe(inner_optimizer, inner_lr, learned), **options}
