"""iMAML: the meta-gradient by implicit differentiation of a regularised inner problem, through
TorchOpt's ``torchopt.diff.implicit.custom_root``; memory does not grow with the inner steps."""

from __future__ import annotations

import warnings
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from metaopt.algorithms.learner import MetaLearner, MetaMetrics
from metaopt.algorithms.subset import Adapt
from metaopt.batched import Batch, support_after, with_rows
from metaopt.checks import check_tasks, scalar_loss
from metaopt.engine import Adapted, check_losses
from metaopt.looped import per_task
from metaopt.rules.imaml import IMAMLRule
from metaopt.rules.linsolve import (
    SolveRecord,
)
from metaopt.rules.proximal import InnerState, linearised
from metaopt.task import BatchedForward, BatchedTasks, Task, is_batched

Tensors = tuple[torch.Tensor, ...]


def _option(name: str) -> Any:
    """An option of the learner's `IMAMLRule`, read and set through the learner."""
    return property(
        lambda self: getattr(self.rule, name),
        lambda self, value: setattr(self.rule, name, value),
        doc=f"The rule's ``{name}``.",
    )


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
        inner_tol: With ``inner_tol`` > 0 or ``power_iterations`` > 0 (SGD only), the inner
            loop is ``proximal_path``: it stops once every task's stationarity residual
            $\lVert\nabla L(\phi) + \lambda(\phi - \theta)\rVert / \lVert\nabla
            L(\theta)\rVert$ is at most ``inner_tol``, or after ``inner_steps`` steps. 0:
            ``inner_steps`` steps whatever the residual.
        power_iterations: Power iterations that estimate the support loss's curvature
            $\hat L$ at θ per task; the inner step is then $\min(\text{inner\_lr},
            1/(\lambda + \hat L))$, stable for the regularised problem (0: ``inner_lr``).
        inner_momentum: Nesterov's acceleration of those steps (SGD only; ``proximal_path``),
            restarted where a step raises the regularised loss: the residual falls by about
            $1 - 1/\sqrt\kappa$ a step instead of $1 - 1/\kappa$, κ = (λ + L̂)/λ.
        on_solve_failure: What a linear solve that misses ``cg_tol`` does: ``"stop"`` (raise
            `ConjugateGradientError`), ``"skip"`` (leave ``.grad`` as it was and return metrics
            whose ``dropped`` is true: no outer step for that meta-batch) or ``"damp"`` (solve
            $(I + H/\lambda + \mu I)x = v$ with the smallest μ of `DAMPING` that meets
            ``cg_tol``; raise when none does).
        curvature: ``"hessian"`` (H is the support loss's Hessian) or ``"gauss-newton"`` (H is
            its Gauss-Newton part $J^\top \nabla^2_f\ell\, J$, J the Jacobian of the network's
            outputs f and ℓ the loss of them: positive semi-definite for a convex ℓ, so
            $I + H/\lambda$ is positive definite and CG cannot break down). On the loop engine
            the task's ``support_loss`` is then handed the linearised network, which it may
            only call (``model(x)``).
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
        inner_tol: float = 0.0,
        power_iterations: int = 0,
        on_solve_failure: str = "stop",
        curvature: str = "hessian",
        inner_momentum: bool = False,
    ) -> None:
        options: dict[str, Any] = {"cg_steps": cg_steps, "cg_tol": cg_tol, "solver": solver}
        options.update(power_iterations=power_iterations, on_solve_failure=on_solve_failure)
        options.update(inner_momentum=inner_momentum)
        rule = IMAMLRule(reg, curvature=curvature, inner_tol=inner_tol, **options)
        if rule.solves_inner and inner_optimizer != "sgd":
            raise ValueError(
                f"inner_tol, power_iterations and inner_momentum need inner_optimizer='sgd' "
                f"(gradient descent on the regularised problem); got {inner_optimizer!r}"
            )
        if engine == "compiled":
            raise ValueError(
                "IMAML has no compiled engine (its CG solve runs in Python); use engine='auto', "
                "'vmap' or 'loop'"
            )
        super().__init__(
            model, rule, inner_lr=inner_lr, inner_steps=inner_steps,
            inner_optimizer=inner_optimizer, engine=engine, batch_norm=batch_norm, adapt=adapt,
        )  # fmt: skip

    @property
    def _rule(self) -> IMAMLRule:
        assert isinstance(self.rule, IMAMLRule)
        return self.rule

    @property
    def solves_inner(self) -> bool:
        """Whether the inner loop is `proximal_path` (a tolerance, a curvature-tied step or
        momentum)."""
        return self._rule.solves_inner

    def _path(
        self,
        objective: Callable[[Tensors], torch.Tensor],
        anchor: Tensors,
        steps: int,
        tol: float | None = None,
        each: bool = False,
    ) -> Iterator[InnerState]:
        return self._rule.path(objective, anchor, steps, self.inner_lr, tol, each)

    def _solve_vmap(
        self, tasks: BatchedTasks, steps: int, tol: float | None = None, each: bool = False
    ) -> Iterator[tuple[Adapted, InnerState]]:
        """`proximal_path` on the vectorised engine: each state as the engine's ``Adapted``
        (``each``: every task stops at the tolerance on its own, as `adapt` stops it)."""
        batch = Batch(self.model, batch_norm=self.batch_norm, adapted=self.adapted)
        every = batch.expand(list(self.model.parameters()), len(tasks))

        def objective(phi: Tensors) -> torch.Tensor:
            return batch.support(tasks, with_rows(every, batch.rows, phi), None)

        anchor = tuple(every[i].detach() for i in batch.rows)
        for state in self._path(objective, anchor, steps, tol, each):
            adapted = batch.params(with_rows(every, batch.rows, state.params))
            yield (adapted, batch.layout.shared, state.before), state

    def inner_residuals(self, tasks: BatchedTasks, steps: int) -> torch.Tensor:
        r"""How far the inner solve gets: each task's stationarity residual
        $\lVert\nabla L(\phi) + \lambda(\phi - \theta)\rVert / \lVert\nabla L(\theta)\rVert$
        after 0, 1, ..., ``steps`` steps of this learner's solve (`proximal_path`, its step
        rule and momentum, the tolerance not applied), ``[steps + 1, B]``, vectorised engine.
        ``benchmarks/imaml_inner_residual.py`` prints it for a trained run."""
        if not is_batched(tasks):
            raise TypeError("inner_residuals needs a BatchedTasks meta-batch (vectorised engine)")
        path = self._solve_vmap(tasks, steps, tol=0.0)
        return torch.stack([state.residual for _, state in path])

    def _vmap_path(
        self, tasks: BatchedTasks, steps: int, *, create_graph: bool
    ) -> Iterator[Adapted]:
        if not self.solves_inner:
            yield from super()._vmap_path(tasks, steps, create_graph=create_graph)
            return
        # Meta-training's batches stop when every task is solved; adapt_batch and the evaluation
        # stop each task on its own, as adapt() does one task at a time.
        for adapted, _ in self._solve_vmap(tasks, steps, each=True):
            yield adapted

    def _solve_task(self, task: Task, index: int, steps: int) -> InnerState:
        """`proximal_path` on one task (the loop engine), to convergence or ``steps`` steps;
        the model's adapted parameters are left at φ (inside the caller's isolation)."""
        named = dict(self.model.named_parameters())
        names = [
            n
            for n, p in named.items()
            if p.requires_grad and (self.adapted is None or n in self.adapted)
        ]
        call = _Call(self.model, task.support_loss)

        def objective(phi: Tensors) -> torch.Tensor:
            tensors = {f"model.{n}": t[0] for n, t in zip(names, phi, strict=True)}
            loss = torch.func.functional_call(call, tensors, ())
            return scalar_loss(loss, "support_loss", index).reshape(1)

        anchor = tuple(named[n].detach().unsqueeze(0) for n in names)
        state = None
        for state in self._path(objective, anchor, steps):
            if bool((state.residual <= self._rule.inner_tol).all()):
                break
        assert state is not None
        # As the inner optimiser does: new tensors in the module's parameter slots (θ's own
        # stay untouched), each φ in value and θ plus a constant in its graph (first-order).
        for n, t in zip(names, state.params, strict=True):
            prefix, _, attr = n.rpartition(".")
            module = self.model.get_submodule(prefix)
            module._parameters[attr] = t[0] + (named[n] - named[n].detach())  # type: ignore[assignment]
        return state

    def _inner_loop(
        self, task: Task, index: int, steps: int, *, create_graph: bool
    ) -> torch.Tensor | None:
        if not self.solves_inner:
            return super()._inner_loop(task, index, steps, create_graph=create_graph)
        return self._solve_task(task, index, steps).before[0]

    def meta_backward(self, tasks: Sequence[Task], *, scale: float | None = None) -> MetaMetrics:
        """Accumulate $\\frac1B\\sum_i (I + H_i/\\lambda)^{-1}\\nabla\\mathcal{L}^q_i(\\phi^*_i)$
        into ``.grad`` of θ; the metrics carry `SolveRecord.metrics` and, when a solve failed
        under ``on_solve_failure="skip"``, ``dropped`` (``.grad`` then left as it was).

        Raises:
            ConjugateGradientError: a solve missed ``cg_tol`` under ``"stop"``, or under
                ``"damp"`` with every μ of `DAMPING` (``.grad`` left as it was).
        """
        tasks, weight = check_tasks(tasks, scale)
        theta: dict[str, torch.Tensor] = {
            n: p for n, p in self.model.named_parameters() if p.requires_grad
        }
        names = [n for n in theta if self.adapted is None or n in self.adapted]
        record = SolveRecord()
        saved = [(p, None if p.grad is None else p.grad.clone()) for p in self.meta_parameters()]

        def solved(state: InnerState) -> None:
            record.inner_residual = max(record.inner_residual, float(state.residual.max()))
            record.inner_steps = max(record.inner_steps, state.steps)

        def vectorised() -> MetaMetrics:
            batch: BatchedTasks = tasks  # type: ignore[assignment]
            if self.solves_inner:
                (last,) = deque(self._solve_vmap(batch, self.inner_steps), maxlen=1)
                (params, fixed, before), state = last
                solved(state)
            else:
                params, fixed, before = self._adapt_vmap(
                    batch, self.inner_steps, create_graph=False
                )
            assert before is not None
            copies = {n: t for n, t in params.items() if n not in theta}

            def losses(phi: Tensors, th: dict[str, torch.Tensor], query: bool) -> torch.Tensor:
                if query:
                    return batch.query_losses(forward_of(phi, th))
                if self._rule.curvature == "gauss-newton":
                    forward = linearised(forward_of, (phi, th), anchor)
                else:
                    forward = forward_of(phi, th)
                return batch.support_losses(forward, None).sum()

            def forward_of(phi: Tensors, th: dict[str, torch.Tensor]) -> BatchedForward:
                every = {n: t.expand(len(batch), *t.shape) for n, t in th.items()}
                # Fresh buffer copies: BatchNorm in training mode updates them in place, which
                # torch.func.grad allows only on tensors made inside the transformed function.
                buffers = {n: t.clone() for n, t in copies.items()}
                return self._forward(
                    {**every, **dict(zip(names, phi, strict=True)), **buffers}, fixed
                )

            # The point the network is linearised at (Gauss-Newton): φ* and θ, constants.
            anchor = (
                tuple(params[n].detach() for n in names),
                {n: t.detach() for n, t in theta.items()},
            )
            with _quiet():
                phi = self._rule.implicit(
                    tuple(params[n].detach() for n in names), theta, names, losses, record
                )
                query = losses(phi, theta, True)
                check_losses(query, len(batch), "query_losses", grad=True)
                (query.sum() * weight).backward()
            forward = self._forward({n: t.detach() for n, t in params.items()}, fixed)
            return MetaMetrics(before, support_after(batch, forward), query.detach())

        def step(task: Task, index: int, weight: float) -> tuple[torch.Tensor, ...]:
            if self.solves_inner:
                state = self._solve_task(task, index, self.inner_steps)
                solved(state)
                before = state.before[0]
            else:
                first = self._inner_loop(task, index, self.inner_steps, create_graph=False)
                assert first is not None
                before = first
            adapted = dict(self.model.named_parameters())

            def losses(phi: Tensors, th: dict[str, torch.Tensor], query: bool) -> torch.Tensor:
                loss = task.query_loss if query else task.support_loss
                if not query and self._rule.curvature == "gauss-newton":
                    return loss(_Called(linearised(network_of, (phi, th), anchor)))
                tensors = {f"model.{n}": t for n, t in tensors_at(phi, th).items()}
                return torch.func.functional_call(_Call(self.model, loss), tensors, ())

            def network_of(phi: Tensors, th: dict[str, torch.Tensor]) -> Callable[..., Any]:
                every = tensors_at(phi, th)
                return lambda *args: torch.func.functional_call(self.model, every, args)

            def tensors_at(phi: Tensors, th: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
                every = {**th, **dict(zip(names, phi, strict=True))}
                every.update((n, b.clone()) for n, b in self.model.named_buffers())  # as above
                return every

            anchor = (  # as above
                tuple(adapted[n].detach() for n in names),
                {n: t.detach() for n, t in theta.items()},
            )

            with _quiet():
                phi = self._rule.implicit(
                    tuple(adapted[n].detach() for n in names), theta, names, losses, record
                )
                query = scalar_loss(losses(phi, theta, True), "query_loss", index)
                (query * weight).backward()
            return before, query.detach()

        metrics = self._run(
            tasks, vectorised, lambda: MetaMetrics(*per_task(self, tasks, weight, step))
        )
        if record.failed:  # on_solve_failure="skip": this meta-batch moves nothing
            for p, grad in saved:
                p.grad = grad
        metrics.extra = record.metrics()
        metrics.dropped = record.failed
        return metrics

    def untrained_baseline(self, model: nn.Module) -> MetaLearner:
        """IMAML's own regularised adaptation, from ``model``."""
        return IMAML(
            model,
            self.inner_lr,
            self.inner_steps,
            inner_optimizer=self.inner_optimizer_name,
            batch_norm=self.batch_norm,
            adapt=self.adapted,
            **self._rule.options(),
        )

    def inner_sgd_rates(self) -> float | list[torch.Tensor] | None:
        return None  # the inner update has the proximal term

    def __repr__(self) -> str:
        options = self._rule.options()
        del options["cg_tol"]
        fields = ", ".join(f"{k}={v!r}" for k, v in options.items())
        return f"{super().__repr__()[:-1]}, {fields})"


# ``algo.reg``, ``algo.cg_steps``, ...: the rule's options, read and set through the learner.
for _name in IMAMLRule().options():
    setattr(IMAML, _name, _option(_name))


class _Call(nn.Module):
    """``loss(model)`` as a module's forward, so that ``torch.func.functional_call`` can run a
    task's loss (which calls the model itself) at given parameter values."""

    def __init__(self, model: nn.Module, loss: Callable[[nn.Module], torch.Tensor]) -> None:
        super().__init__()
        self.model = model
        self.loss = loss

    def forward(self) -> torch.Tensor:
        return self.loss(self.model)


class _Called(nn.Module):
    """A network that can only be called: what a task's support loss is handed under
    Gauss-Newton curvature on the loop engine, the network linearised around (φ*, θ)."""

    def __init__(self, forward: Callable[..., Any]) -> None:
        super().__init__()
        self._call = forward

    def forward(self, *args: Any) -> Any:
        return self._call(*args)

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            raise TypeError(
                f"IMAML(curvature='gauss-newton') hands the task's support_loss the network "
                f"linearised in its parameters, which can only be called (model(x)); the task "
                f"asked for model.{name} (use curvature='hessian')"
            ) from None


@contextmanager
def _quiet() -> Iterator[None]:
    """Silence TorchOpt 0.7's FutureWarning about its own use of ``functorch.vjp`` (a
    deprecation inside TorchOpt that a user of metaopt can do nothing about)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*functorch.vjp.*", category=FutureWarning)
        yield
