"""iMAML: the meta-gradient by implicit differentiation of a regularised inner problem, through
TorchOpt's ``torchopt.diff.implicit.custom_root``; memory does not grow with the inner steps."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, NamedTuple

import torch
import torchopt
from torch import nn
from torchopt.base import GradientTransformation

from metaopt.algorithms.checks import check_tasks, scalar_loss
from metaopt.algorithms.learner import MetaLearner, MetaMetrics
from metaopt.algorithms.linsolve import SOLVERS, norm, solve
from metaopt.algorithms.subset import Adapt
from metaopt.engine import check_losses
from metaopt.options import check_choice, check_int, check_real
from metaopt.task import BatchedTasks, Task

Tensors = tuple[torch.Tensor, ...]


class ConjugateGradientError(FloatingPointError, RuntimeError):
    """The implicit meta-gradient's linear solve did not reach ``cg_tol``: a numerical failure
    of the run (like a non-finite loss), not a bug; ``metaopt train`` exits 1 with this message."""


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


class IMAML(MetaLearner):
    r"""Implicit MAML (Rajeswaran, Finn, Kakade & Levine, 2019), "Meta-Learning with Implicit
    Gradients".

    The inner problem is regularised towards the initialisation,

    $$
    \phi^*_i = \arg\min_\phi\ \mathcal{L}^s_i(\phi) + \tfrac{\lambda}{2}\lVert\phi-\theta\rVert^2,
    $$

    solved approximately by ``inner_steps`` steps of the inner optimiser (no graph is kept, so
    memory does not depend on the number of steps). At the root of
    $F(\phi,\theta) = \phi - \theta + \nabla\mathcal{L}^s_i(\phi)/\lambda$ the implicit
    function theorem gives $d\phi^*/d\theta = (I + H_i/\lambda)^{-1}$, with $H_i$
    the support loss's Hessian at $\phi^*_i$, so the meta-gradient is

    $$g = \frac1B\sum_i \Big(I + \frac{H_i}{\lambda}\Big)^{-1}\nabla\mathcal{L}^q_i(\phi^*_i),$$

    the linear system solved by ``cg_steps`` conjugate-gradient iterations of Hessian-vector
    products (TorchOpt's ``custom_root`` with ``solve_cg``), or by MINRES (``solver="minres"``),
    which needs $I + H/\lambda$ only nonsingular, not positive definite: past a saddle
    point of the support loss H may have eigenvalues below −λ, where CG breaks down but the
    implicit function theorem still holds. The solve is checked: when the
    relative residual $\lVert(I + H/\lambda)x - v\rVert / \lVert v\rVert$ exceeds
    ``cg_tol`` (CG stopped early, or $I + H/\lambda$ is not positive definite because
    $H$ has an eigenvalue below $-\lambda$ and the solver is CG),
    ``meta_backward`` raises instead of
    returning a wrong or zero gradient. On the vectorised engine the tasks' systems are solved as
    one block-diagonal system (the tolerance applies to all tasks together), with H the Hessian
    of the whole support loss (``support_losses(forward, None)``); on the loop engine H is the
    Hessian of ``task.support_loss`` as the task gives it, so a task that hands out minibatches
    there must not be used with iMAML (the sine family refuses ``--minibatch`` with it).

    With ``adapt=`` (ANIL) only the adapted parameters φ_A are regularised and solved for; the
    others enter $\mathcal{L}^s$ as θ, and their meta-gradient includes the cross term
    $-H_{\bar A A}(H_{AA} + \lambda I)^{-1}\nabla_A\mathcal{L}^q$.

    Args:
        model: The network θ parameterises.
        inner_lr: Inner learning rate.
        inner_steps: Inner steps towards $\phi^*$.
        reg: λ > 0, the strength of the pull towards θ.
        cg_steps: Iterations of the linear solver per meta-gradient (fewer only once the
            residual reaches machine precision).
        cg_tol: Largest relative residual $\lVert(I + H/\lambda)x - v\rVert/\lVert v
            \rVert$ of the solve accepted (of this system whatever the solver); beyond it
            ``meta_backward`` raises.
        solver: ``"cg"`` (conjugate gradient, the paper's; needs $I + H/\lambda$
            positive definite), ``"minres"`` (symmetric, possibly indefinite; one
            Hessian-vector product per iteration, as CG) or ``"normal_cg"`` (CG on
            $(I + H/\lambda)^2x = (I + H/\lambda)v$; two products per iteration and a
            squared condition number).
        inner_optimizer: ``"sgd"`` or ``"adam"``, on the regularised support loss.
        engine: ``"auto"``, ``"loop"`` or ``"vmap"`` (``"compiled"`` is refused).
        batch_norm: As for [`MAML`][metaopt.MAML].
        adapt: As for [`MAML`][metaopt.MAML].
    """

    def __init__(
        self,
        model: nn.Module,
        inner_lr: float = 0.01,
        inner_steps: int = 10,
        reg: float = 1.0,
        cg_steps: int = 10,
        cg_tol: float = 1e-3,
        inner_optimizer: str = "sgd",
        engine: str = "auto",
        batch_norm: str = "running",
        adapt: Adapt = None,
        solver: str = "cg",
    ) -> None:
        self.reg = check_real("reg", reg, low=0, low_open=True)
        self.solver = check_choice("solver", solver, SOLVERS)
        self.cg_steps = check_int("cg_steps", cg_steps, 1)
        self.cg_tol = check_real("cg_tol", cg_tol, low=0, low_open=True)
        if engine == "compiled":
            raise ValueError(
                "IMAML has no compiled engine (its CG solve runs in Python); use engine='auto', "
                "'vmap' or 'loop'"
            )
        super().__init__(model, inner_lr, inner_steps, inner_optimizer, engine, batch_norm, adapt)

    def _inner_transform(self) -> GradientTransformation:
        return proximal(super()._inner_transform(), self.reg)

    @property
    def name(self) -> str:
        return "imaml"

    def meta_backward(self, tasks: Sequence[Task], *, scale: float | None = None) -> MetaMetrics:
        """Accumulate $\\frac1B\\sum_i (I + H_i/\\lambda)^{-1}\\nabla\\mathcal{L}^q_i(\\phi^*_i)$
        into ``.grad`` of θ.

        Raises:
            RuntimeError: when the CG solve did not reach ``cg_tol`` (``.grad`` left as it was).
        """
        tasks, weight = check_tasks(tasks, scale)
        theta: dict[str, torch.Tensor] = {
            n: p for n, p in self.model.named_parameters() if p.requires_grad
        }
        names = [n for n in theta if self.adapted is None or n in self.adapted]

        def vectorised() -> MetaMetrics:
            batch: BatchedTasks = tasks  # type: ignore[assignment]
            params, fixed, before = self._adapt_vmap(batch, self.inner_steps, create_graph=False)
            assert before is not None
            copies = {n: t for n, t in params.items() if n not in theta}

            def losses(phi: Tensors, th: dict[str, torch.Tensor], query: bool) -> torch.Tensor:
                every = {n: t.expand(len(batch), *t.shape) for n, t in th.items()}
                # Fresh buffer copies: BatchNorm in training mode updates them in place, which
                # torch.func.grad allows only on tensors made inside the transformed function.
                buffers = {n: t.clone() for n, t in copies.items()}
                forward = self._forward(
                    {**every, **dict(zip(names, phi, strict=True)), **buffers}, fixed
                )
                if query:
                    return batch.query_losses(forward)
                return batch.support_losses(forward, None).sum()

            with _quiet():
                phi = self._implicit(tuple(params[n].detach() for n in names), theta, names, losses)
                query = losses(phi, theta, True)
                check_losses(query, len(batch), "query_losses", grad=True)
                (query.sum() * weight).backward()
            forward = self._forward({n: t.detach() for n, t in params.items()}, fixed)
            return MetaMetrics(before, self._support_after_vmap(batch, forward), query.detach())

        def step(task: Task, index: int, weight: float) -> tuple[torch.Tensor, ...]:
            before = self._inner_loop(task, index, self.inner_steps, create_graph=False)
            assert before is not None
            adapted = dict(self.model.named_parameters())

            def losses(phi: Tensors, th: dict[str, torch.Tensor], query: bool) -> torch.Tensor:
                loss = task.query_loss if query else task.support_loss
                call = _Call(self.model, loss)
                every = {**th, **dict(zip(names, phi, strict=True))}
                every.update((n, b.clone()) for n, b in self.model.named_buffers())  # as above
                tensors = {f"model.{n}": t for n, t in every.items()}
                return torch.func.functional_call(call, tensors, ())

            with _quiet():
                phi = self._implicit(
                    tuple(adapted[n].detach() for n in names), theta, names, losses
                )
                query = scalar_loss(losses(phi, theta, True), "query_loss", index)
                (query * weight).backward()
            return before, query.detach()

        return self._run(tasks, vectorised, lambda: self._per_task(tasks, weight, step))  # type: ignore[arg-type]

    def _implicit(
        self,
        solution: Tensors,
        theta: dict[str, torch.Tensor],
        names: list[str],
        losses: Callable[[Tensors, dict[str, torch.Tensor], bool], torch.Tensor],
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

        @torchopt.diff.implicit.custom_root(optimality, argnums=1, solve=self._solve)
        def solve_inner(phi: Tensors, values: Tensors) -> Tensors:
            return solution

        return solve_inner(solution, tuple(theta.values()))  # type: ignore[return-value]

    def _solve(self, matvec: Callable[[Tensors], Tensors], b: Tensors) -> Tensors:
        """``cg_steps`` iterations of ``solver`` on ``matvec(x) = b`` (as the paper: a fixed
        budget; fewer only once the residual is at machine precision), checked: the relative
        residual of this system (not of normal equations) must be ≤ ``cg_tol``."""
        try:
            x = solve(self.solver, matvec, b, self.cg_steps)
        except ZeroDivisionError:  # TorchOpt's CG met a zero curvature pᵀAp: A is indefinite
            x = tuple(torch.full_like(t, math.nan) for t in b)
        norm_b = norm(b)
        if norm_b == 0:
            return x
        residual = norm(tuple(ax - bi for ax, bi in zip(matvec(x), b, strict=True))) / norm_b
        if not residual <= self.cg_tol:  # also NaN
            hint = (
                "try solver='minres' (I + H/λ need not be positive definite), "
                if self.solver == "cg"
                else ""
            )
            raise ConjugateGradientError(
                f"IMAML: {_TITLES[self.solver]} did not converge: relative residual "
                f"{residual:.3g} > cg_tol={self.cg_tol:g} after cg_steps={self.cg_steps}. Raise "
                f"cg_steps, raise reg (λ; CG needs H's eigenvalues above −λ), {hint}or loosen "
                "cg_tol"
            )
        return x

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "reg": self.reg,
            "cg_steps": self.cg_steps,
            "solver": self.solver,
        }

    def untrained_baseline(self, model: nn.Module) -> MetaLearner:
        """IMAML's own regularised adaptation, from ``model``."""
        rule, solver = self.inner_optimizer_name, (self.reg, self.cg_steps, self.cg_tol)
        scope = ("auto", self.batch_norm, self.adapted)  # engine, BatchNorm mode, adapted names
        return IMAML(
            model, self.inner_lr, self.inner_steps, *solver, rule, *scope, solver=self.solver
        )

    def inner_sgd_rates(self) -> float | list[torch.Tensor] | None:
        return None  # the inner update has the proximal term: evaluate through adapt()

    def __repr__(self) -> str:
        return (
            super().__repr__()[:-1]
            + f", reg={self.reg}, cg_steps={self.cg_steps}, solver={self.solver!r})"
        )


_TITLES = {
    "cg": "conjugate gradient",
    "minres": "MINRES",
    "normal_cg": "conjugate gradient on the normal equations",
}


class _Call(nn.Module):
    """``loss(model)`` as a module's forward, so that ``torch.func.functional_call`` can run a
    task's loss (which calls the model itself) at given parameter values."""

    def __init__(self, model: nn.Module, loss: Callable[[nn.Module], torch.Tensor]) -> None:
        super().__init__()
        self.model = model
        self.loss = loss

    def forward(self) -> torch.Tensor:
        return self.loss(self.model)


@contextmanager
def _quiet() -> Iterator[None]:
    """Silence TorchOpt 0.7's FutureWarning about its own use of ``functorch.vjp`` (a
    deprecation inside TorchOpt that a user of metaopt can do nothing about)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*functorch.vjp.*", category=FutureWarning)
        yield
