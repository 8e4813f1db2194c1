"""MAML, first-order MAML, Meta-SGD and Reptile behind one interface.

Every algorithm binds a model and its hyper-parameters and offers the same three calls:

* ``meta_parameters()``: what the outer optimiser updates (θ, and Meta-SGD's rates α);
* ``meta_backward(tasks)``: adapt to each task, accumulate the meta-gradient averaged over the
  tasks into ``.grad`` of the meta-parameters, restore the model, return per-task metrics;
* ``adapt(task)``: a context manager yielding the model adapted to one task (for evaluation),
  restored on exit, also when the body raises.

The outer step is left to any ``torch.optim`` optimiser, so a training step reads::

    outer.zero_grad()
    metrics = algo.meta_backward(tasks)
    outer.step()
"""

from __future__ import annotations

import warnings
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch
import torchopt
from torch import nn
from torchopt.base import GradientTransformation

from metaopt.compiled import compiled_meta_backward
from metaopt.engine import (
    BATCH_NORM_MODES,
    Adapted,
    batch_norm_mode,
    batched_forward,
    can_vectorise,
    check_losses,
    inner_path,
    is_batching_failure,
)
from metaopt.inner import (
    INNER_OPTIMIZERS,
    InnerOptimizer,
    inner_transform,
    learned_rate_sgd,
)
from metaopt.isolation import isolated
from metaopt.options import check_choice, check_int, check_real
from metaopt.task import BatchedForward, BatchedTasks, Task, is_batched, is_task

__all__ = [
    "ALGORITHMS",
    "ENGINES",
    "MAML",
    "MetaLearner",
    "MetaMetrics",
    "MetaSGD",
    "Reptile",
    "linear_annealing",
]

#: ``loop``: one task at a time, as the papers write it. ``vmap``: all tasks at once
#: (:mod:`metaopt.engine`). ``auto``: ``vmap`` whenever the meta-batch implements
#: :class:`metaopt.task.BatchedTasks` and the vectorised engine computes exactly what the loop
#: engine does on the model (:func:`metaopt.engine.can_vectorise`), else ``loop``. ``compiled``:
#: the vectorised meta-iteration as one ``torch.compile``d function (:mod:`metaopt.compiled`),
#: only when asked for: its first call compiles for tens of seconds.
ENGINES = ("auto", "vmap", "loop", "compiled")

#: The algorithms by their names on the command line: MAML, first-order MAML, Meta-SGD, Reptile.
ALGORITHMS = ("maml", "fomaml", "metasgd", "reptile")


class MetaMetrics:
    """Per-task losses of one ``meta_backward`` call, each a 1-D tensor with one entry per task.

    Attributes:
        support_before: support loss at θ, before adaptation.
        support_after: support loss at the adapted parameters θ'. Computed on first access
            (one more forward pass per task, or for RL one more round of sampling), so a caller
            that never reads it does not pay for it; the loop engine keeps a detached copy of
            each task's adapted parameters for it.
        query: query loss at θ'.
    """

    __slots__ = ("_support_after", "query", "support_before")

    def __init__(
        self,
        support_before: torch.Tensor,
        support_after: torch.Tensor | Callable[[], torch.Tensor],
        query: torch.Tensor,
    ) -> None:
        self.support_before = support_before
        self._support_after = support_after
        self.query = query

    @property
    def support_after(self) -> torch.Tensor:
        """Per-task support loss after adaptation, ``[B]``; computed on first access."""
        if callable(self._support_after):
            self._support_after = self._support_after()
        return self._support_after

    def means(self) -> dict[str, float]:
        """Task-averaged values, for logging."""
        return {
            "support_before": self.support_before.mean().item(),
            "support_after": self.support_after.mean().item(),
            "query": self.query.mean().item(),
        }

    def __repr__(self) -> str:
        return (
            f"MetaMetrics(support_before={self.support_before}, "
            f"support_after={self.support_after}, query={self.query})"
        )


class MetaLearner:
    """What the four algorithms share: validation, the inner loop, the engines and ``adapt``.

    Subclasses define ``meta_backward``; Meta-SGD additionally swaps the inner update rule.

    Attributes:
        last_engine: The engine the last ``meta_backward`` ran on, ``"loop"``, ``"vmap"`` or
            ``"compiled"``
            (``None`` before the first call). With ``engine="auto"`` it is ``"vmap"`` exactly
            when the meta-batch is a :class:`~metaopt.task.BatchedTasks` and the model passed
            :func:`metaopt.engine.can_vectorise`.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        inner_lr: float,
        inner_steps: int,
        inner_optimizer: str = "sgd",
        engine: str = "auto",
        batch_norm: str = "running",
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if not any(p.requires_grad for p in model.parameters()):
            raise ValueError("model has no trainable parameters (none with requires_grad=True)")
        check_real("inner_lr", inner_lr, low=0, low_open=True)
        check_int("inner_steps", inner_steps, 1)
        check_choice("inner_optimizer", inner_optimizer, INNER_OPTIMIZERS)
        check_choice("engine", engine, ENGINES)
        check_choice("batch_norm", batch_norm, BATCH_NORM_MODES)
        self.engine = engine
        self.batch_norm = batch_norm
        self.last_engine: str | None = None
        self._refused: str | None = None  # why auto stopped trying the vectorised engine
        self._warned = False  # auto's fall-back to the loop engine is said once
        self.model = model
        self.inner_lr = float(inner_lr)
        self.inner_steps = inner_steps
        self.inner_optimizer_name = inner_optimizer
        self._init_learned_state()
        self.inner_optimizer = InnerOptimizer(model, self._inner_transform())

    def _init_learned_state(self) -> None:
        """Create what the inner update meta-learns (Meta-SGD's rates), from the validated
        hyper-parameters; nothing for the algorithms with a fixed inner update."""

    def _inner_transform(self) -> GradientTransformation:
        """The inner update rule. Both engines hand it one gradient per model parameter, in
        ``parameters()`` order (``None`` for a frozen parameter)."""
        return inner_transform(self.inner_optimizer_name, self.inner_lr)

    def _vectorise(self, tasks: Sequence[Task]) -> bool:
        """Whether this meta-batch goes to the vectorised engine (decided before any work)."""
        if self.engine == "loop":
            return False
        reason = can_vectorise(self.model, tasks, self.batch_norm)
        if reason is None and self.engine == "auto" and is_batched(tasks):
            reason = self._refused
        if reason is not None and self.engine in ("vmap", "compiled"):
            raise TypeError(f"engine={self.engine!r} cannot run this meta-batch: {reason}")
        if reason is not None and is_batched(tasks) and not self._warned:
            self._warned = True
            warnings.warn(
                f"engine='auto' runs this model on the loop engine: {reason}",
                UserWarning,
                stacklevel=4,
            )
        return reason is None

    def _run(
        self,
        tasks: Sequence[Task],
        vectorised: Callable[[], MetaMetrics],
        looped: Callable[[], MetaMetrics],
    ) -> MetaMetrics:
        """Run one engine; on failure leave ``.grad`` as it was. Under ``auto``, an operation
        torch.func cannot batch (found only when it runs) sends this and later calls to the loop
        engine, with a warning. Tasks whose losses keep state (a sampler counting its calls)
        have seen the failed attempt's calls when the loop engine takes over."""
        if not torch.is_grad_enabled():
            raise RuntimeError(
                "meta_backward needs autograd, but gradients are disabled here (inside "
                "torch.no_grad() or torch.inference_mode()); call it outside that block"
            )
        grads = [(p, None if p.grad is None else p.grad.clone()) for p in self.meta_parameters()]

        def restore_grads() -> None:
            for p, grad in grads:
                p.grad = grad

        use_vmap = self._vectorise(tasks)
        try:
            self.last_engine = (
                ("compiled" if self.engine == "compiled" else "vmap") if use_vmap else "loop"
            )
            return vectorised() if use_vmap else looped()
        except Exception as error:
            restore_grads()
            if not (use_vmap and is_batching_failure(error)):
                raise
            reason = str(error).strip().splitlines()[0]
            if self.engine in ("vmap", "compiled"):
                raise TypeError(
                    f"engine={self.engine!r} cannot run this model: {reason}"
                ) from error
            self._refused = f"torch.func.vmap cannot batch an operation of it ({reason})"
            self._warned = True
            warnings.warn(
                f"engine='auto' runs this model on the loop engine from now on: {self._refused}",
                UserWarning,
                stacklevel=3,
            )
            self.last_engine = "loop"
            try:
                return looped()
            except BaseException:
                restore_grads()
                raise

    def _compiled_or(
        self, eager: Callable[[], MetaMetrics], tasks: Sequence[Task], weight: float, kind: str
    ) -> Callable[[], MetaMetrics]:
        """The vectorised engine's meta-iteration: ``eager``, or with ``engine="compiled"`` the
        same meta-iteration compiled (:func:`metaopt.compiled.compiled_meta_backward`)."""
        if self.engine != "compiled":
            return eager
        batch: BatchedTasks = tasks  # type: ignore[assignment]
        return lambda: MetaMetrics(*compiled_meta_backward(self, batch, weight, kind))

    def _adapt_vmap(self, tasks: BatchedTasks, steps: int, *, create_graph: bool) -> Adapted:
        """The vectorised engine's inner loop with this algorithm's update rule: the last state
        of :func:`metaopt.engine.inner_path`."""
        # Only the last state is kept (``*_, last = ...`` would hold every earlier one).
        (last,) = deque(self._vmap_path(tasks, steps, create_graph=create_graph), maxlen=1)
        return last

    def _vmap_path(
        self, tasks: BatchedTasks, steps: int, *, create_graph: bool
    ) -> Iterator[Adapted]:
        return inner_path(
            self.model,
            tasks,
            self._inner_transform(),
            steps,
            create_graph=create_graph,
            batch_norm=self.batch_norm,
        )

    def _forward(
        self, params: dict[str, torch.Tensor], fixed: dict[str, torch.Tensor]
    ) -> BatchedForward:
        return batched_forward(self.model, params, fixed, batch_norm=self.batch_norm)

    def meta_parameters(self) -> list[nn.Parameter]:
        """The tensors the outer optimiser updates: the model's trainable parameters θ."""
        return [p for p in self.model.parameters() if p.requires_grad]

    def meta_backward(self, tasks: Sequence[Task], *, scale: float | None = None) -> MetaMetrics:
        """Adapt to each task, accumulate the meta-gradient (averaged over the tasks, or times
        ``scale``) into ``.grad`` of :meth:`meta_parameters`, restore the model, return metrics."""
        raise NotImplementedError

    @contextmanager
    def adapt(
        self, task: Task, steps: int | None = None, *, create_graph: bool = False
    ) -> Iterator[nn.Module]:
        """Yield the model adapted to ``task`` by ``steps`` inner steps (default: ``inner_steps``).

        Everything (parameters, buffers, inner-optimiser state, train/eval mode) is restored on
        exit, also when the body raises. The adapted parameters stay a function of θ (first-order
        unless ``create_graph``), so a loss of the yielded model can still be differentiated.
        """
        steps = self.inner_steps if steps is None else check_int("steps", steps, 0)
        _check_task(task, 0)
        # BatchNorm's mode outside isolation, whose restore() puts back the modes it found.
        with (
            batch_norm_mode(self.model, self.batch_norm),
            isolated(self.model, self.inner_optimizer),
        ):
            self._inner_loop(task, 0, steps, create_graph=create_graph)
            yield self.model

    def adapt_batch(
        self, tasks: BatchedTasks, steps: int | None = None, *, create_graph: bool = False
    ) -> BatchedForward:
        """All tasks of ``tasks`` adapted at once (the vectorised engine): evaluation at scale.

        Returns ``forward(x)``, which applies task b's adapted parameters to ``x[b]`` (see
        :class:`metaopt.task.BatchedTasks`). The model itself is not touched. ``steps=0`` gives
        the unadapted parameters, one copy per task.

        Raises:
            TypeError: when ``tasks`` is not a :class:`~metaopt.task.BatchedTasks` or the model
                cannot be vectorised (buffers updated in training mode).
        """
        steps = self._batch_steps(tasks, steps)
        params, fixed, _ = self._adapt_vmap(tasks, steps, create_graph=create_graph)
        return self._forward(params, fixed)

    def adapt_batch_path(self, tasks: BatchedTasks, steps: int) -> Iterator[BatchedForward]:
        """:meth:`adapt_batch`'s ``forward`` after 0, 1, ..., ``steps`` inner steps, one after the
        other from a single adaptation (first-order: no graph through the inner gradients), for
        an evaluation that reads the metric after several numbers of steps.

        Raises:
            TypeError: as :meth:`adapt_batch`.
        """
        path = self._vmap_path(tasks, self._batch_steps(tasks, steps), create_graph=False)
        return (self._forward(params, fixed) for params, fixed, _ in path)

    def _batch_steps(self, tasks: BatchedTasks, steps: int | None) -> int:
        """The validated step count of a batched adaptation; TypeError when it cannot run."""
        steps = self.inner_steps if steps is None else check_int("steps", steps, 0)
        reason = can_vectorise(self.model, tasks, self.batch_norm)
        if reason is not None:
            raise TypeError(f"adapt_batch cannot run these tasks: {reason}")
        return steps

    def _inner_loop(
        self, task: Task, index: int, steps: int, *, create_graph: bool
    ) -> torch.Tensor | None:
        """Take ``steps`` inner steps in place; return the first support loss (at θ), detached."""
        first = None
        for _ in range(steps):
            loss = _scalar(task.support_loss(self.model), "support_loss", index)
            if first is None:
                first = loss.detach()
            self.inner_optimizer.step(loss, create_graph=create_graph)
        return first

    def _per_task(
        self,
        tasks: Sequence[Task],
        weight: float,
        step: Callable[[Task, int, float], tuple[torch.Tensor, torch.Tensor]],
    ) -> MetaMetrics:
        """Run ``step(task, index, weight) -> (support before, query)`` on each task inside task
        isolation; keep each task's adapted state (detached) for the lazy ``support_after``."""
        for index, task in enumerate(tasks):  # all checked before any work is done
            _check_task(task, index)
        before, query, adapted = [], [], []
        with (
            batch_norm_mode(self.model, self.batch_norm),
            isolated(self.model, self.inner_optimizer) as restore,
        ):
            for index, task in enumerate(tasks):
                first, last = step(task, index, weight)
                adapted.append(torchopt.extract_state_dict(self.model, by="deepcopy"))
                restore()
                before.append(first)
                query.append(last)

        def support_after() -> torch.Tensor:
            losses = []
            with (
                batch_norm_mode(self.model, self.batch_norm),
                isolated(self.model, self.inner_optimizer) as restore,
                torch.no_grad(),
            ):
                for index, (task, state) in enumerate(zip(tasks, adapted, strict=True)):
                    torchopt.recover_state_dict(self.model, state)
                    loss = task.support_loss(self.model)
                    losses.append(_scalar(loss, "support_loss", index, grad=False))
                    restore()
            return torch.stack(losses)

        return MetaMetrics(torch.stack(before), support_after, torch.stack(query))

    def _support_after_vmap(self, tasks: BatchedTasks, forward: Any) -> Callable[[], torch.Tensor]:
        def compute() -> torch.Tensor:
            with torch.no_grad():
                losses = tasks.support_losses(forward, None)
            return check_losses(losses, len(tasks), "support_losses")

        return compute

    # -- what code outside the algorithms reads, instead of checking their types -------------

    @property
    def name(self) -> str:
        """The algorithm's name in :data:`ALGORITHMS` (``--algo``)."""
        raise NotImplementedError

    @property
    def exact_meta_gradient(self) -> bool:
        """Whether ``meta_backward`` gives the exact gradient of the meta-loss
        :math:`\\frac1B\\sum_i \\mathcal{L}^q_i(\\theta'_i)` (second-order MAML and Meta-SGD), which
        finite differences of the meta-loss can check."""
        return False

    def rate_parameters(self) -> list[nn.Parameter]:
        """Meta-learned inner learning rates, one per model parameter in ``parameters()`` order
        (Meta-SGD's α); empty for the algorithms with a fixed inner learning rate."""
        return []

    def learned_state(self) -> dict[str, Any]:
        """What a checkpoint needs besides ``model.state_dict()`` (Meta-SGD: ``inner_lrs``)."""
        return {}

    def load_learned_state(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`learned_state` returned (extra keys in ``state`` are ignored)."""

    def inner_sgd_rates(self) -> float | list[torch.Tensor] | None:
        """The step sizes of the inner update when it is plain or learned-rate SGD: the scalar
        ``inner_lr``, or Meta-SGD's rates (detached, ``parameters()`` order); ``None`` for any
        other inner optimiser (evaluate with :meth:`adapt` then)."""
        return self.inner_lr if self.inner_optimizer_name == "sgd" else None

    def describe(self) -> dict[str, Any]:
        """How this algorithm adapts, for reports and eval.json."""
        return {"rule": self.inner_optimizer_name, "lr": self.inner_lr}

    def untrained_baseline(self, model: nn.Module) -> MetaLearner:
        """A learner that adapts ``model`` the way this one adapts, minus anything meta-learned:
        the inner optimiser at ``inner_lr`` (Meta-SGD's rates start there)."""
        return MAML(
            model,
            inner_lr=self.inner_lr,
            inner_optimizer=self.inner_optimizer_name,
            batch_norm=self.batch_norm,
        )

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(inner_lr={self.inner_lr}, inner_steps={self.inner_steps}, "
            f"inner_optimizer={self.inner_optimizer_name!r}, engine={self.engine!r}, "
            f"batch_norm={self.batch_norm!r})"
        )


class MAML(MetaLearner):
    r"""Model-Agnostic Meta-Learning (Finn et al., 2017), second order by default.

    For each task :math:`\mathcal{T}_i`, ``inner_steps`` differentiable steps on the support loss,

    .. math:: \theta'_i = \theta - \alpha \nabla_\theta \mathcal{L}^{s}_i(\theta)
              \quad\text{(repeated } n \text{ times)},

    then the meta-gradient :math:`\frac{1}{B}\sum_i \nabla_\theta \mathcal{L}^{q}_i(\theta'_i)`,
    differentiating through the inner steps. With ``first_order=True`` (first-order MAML) the inner
    gradients are treated as constants, so :math:`\partial\theta'_i/\partial\theta = I` and the
    meta-gradient is the query gradient at :math:`\theta'_i`, applied to θ.

    Args:
        model: The network θ parameterises.
        inner_lr: Inner learning rate α.
        inner_steps: Inner steps n per task.
        first_order: First-order MAML.
        inner_optimizer: ``"sgd"`` (TorchOpt's differentiable SGD, as ``torchopt.MetaSGD``) or
            ``"adam"`` (:func:`metaopt.inner.adam`: ``torchopt.MetaAdam``'s update with ε inside
            the root > 0 and the bias correction exact in the parameters' dtype).
        engine: ``"auto"``, ``"loop"``, ``"vmap"`` or ``"compiled"`` (:data:`ENGINES`).
        batch_norm: ``"running"`` or ``"batch"``: what BatchNorm layers do during adaptation
            (:data:`metaopt.engine.BATCH_NORM_MODES`); the same on both engines.
    """

    def __init__(
        self,
        model: nn.Module,
        inner_lr: float = 0.01,
        inner_steps: int = 1,
        first_order: bool = False,
        inner_optimizer: str = "sgd",
        engine: str = "auto",
        batch_norm: str = "running",
    ) -> None:
        if not isinstance(first_order, bool):
            raise TypeError(f"first_order must be a bool, got {first_order!r}")
        self.first_order = first_order
        super().__init__(
            model,
            inner_lr=inner_lr,
            inner_steps=inner_steps,
            inner_optimizer=inner_optimizer,
            engine=engine,
            batch_norm=batch_norm,
        )

    def meta_backward(self, tasks: Sequence[Task], *, scale: float | None = None) -> MetaMetrics:
        """Accumulate :math:`\\frac{1}{B}\\sum_i \\nabla \\mathcal{L}^q_i(\\theta'_i)` into ``.grad``.

        Args:
            tasks: The meta-batch.
            scale: Weight of each task's query loss (default ``1 / len(tasks)``); a sharded
                meta-batch passes ``1 / global_batch``.
        """
        tasks, weight = _check_tasks(tasks, scale)

        def vectorised() -> MetaMetrics:
            batch: BatchedTasks = tasks  # type: ignore[assignment]
            params, fixed, before = self._adapt_vmap(
                batch, self.inner_steps, create_graph=not self.first_order
            )
            assert before is not None
            forward = self._forward(params, fixed)
            query = check_losses(batch.query_losses(forward), len(batch), "query_losses", grad=True)
            _backward_query(query, weight)
            return MetaMetrics(before, self._support_after_vmap(batch, forward), query.detach())

        def step(task: Task, index: int, weight: float) -> tuple[torch.Tensor, ...]:
            before = self._inner_loop(
                task, index, self.inner_steps, create_graph=not self.first_order
            )
            query = _scalar(task.query_loss(self.model), "query_loss", index)
            _backward_query(query, weight)
            assert before is not None
            return before, query.detach()

        return self._run(
            tasks,
            self._compiled_or(vectorised, tasks, weight, "maml"),
            lambda: self._per_task(tasks, weight, step),  # type: ignore[arg-type]
        )

    @property
    def name(self) -> str:
        return "fomaml" if self.first_order else "maml"

    @property
    def exact_meta_gradient(self) -> bool:
        return not self.first_order

    def __repr__(self) -> str:
        return super().__repr__()[:-1] + f", first_order={self.first_order})"


class MetaSGD(MAML):
    r"""Meta-SGD (Li et al., 2017): MAML with a learned learning rate for every parameter entry.

    .. math:: \theta'_i = \theta - \alpha \circ \nabla_\theta \mathcal{L}^{s}_i(\theta),

    where α has the shape of θ, starts at ``inner_lr`` and is meta-learned together with θ by the
    query loss. Everything else is MAML's code path. ``inner_lrs`` is an ``nn.ParameterList`` in
    the order of ``model.parameters()``.
    """

    def __init__(
        self,
        model: nn.Module,
        inner_lr: float = 0.01,
        inner_steps: int = 1,
        first_order: bool = False,
        engine: str = "auto",
        batch_norm: str = "running",
    ) -> None:
        super().__init__(model, inner_lr, inner_steps, first_order, "sgd", engine, batch_norm)

    def _init_learned_state(self) -> None:
        self.inner_lrs = nn.ParameterList(
            nn.Parameter(torch.full_like(p, self.inner_lr), requires_grad=p.requires_grad)
            for p in self.model.parameters()
        )

    def _inner_transform(self) -> GradientTransformation:
        return learned_rate_sgd(list(self.inner_lrs))

    @property
    def name(self) -> str:
        return "metasgd"

    def meta_parameters(self) -> list[nn.Parameter]:
        """θ followed by the learned rates α of the trainable parameters."""
        return super().meta_parameters() + [a for a in self.inner_lrs if a.requires_grad]

    def rate_parameters(self) -> list[nn.Parameter]:
        return list(self.inner_lrs)

    def learned_state(self) -> dict[str, Any]:
        return {"inner_lrs": [rate.detach().clone() for rate in self.inner_lrs]}

    def load_learned_state(self, state: Mapping[str, Any]) -> None:
        with torch.no_grad():
            for rate, saved in zip(self.inner_lrs, state["inner_lrs"], strict=True):
                rate.copy_(saved)

    def inner_sgd_rates(self) -> float | list[torch.Tensor] | None:
        return [rate.detach() for rate in self.inner_lrs]

    def describe(self) -> dict[str, Any]:
        rates = torch.cat([r.detach().flatten() for r in self.inner_lrs])
        return {
            "rule": "meta-sgd (learned per-parameter rates)",
            "rate_mean": rates.mean().item(),
            "rate_min": rates.min().item(),
            "rate_max": rates.max().item(),
        }


class Reptile(MetaLearner):
    r"""Reptile (Nichol et al., 2018), "On First-Order Meta-Learning Algorithms".

    For each task, ``inner_steps`` plain (non-differentiable) steps on the support loss give
    :math:`\tilde\theta_i`; the meta-gradient written into ``.grad`` is

    .. math:: g = \frac{1}{B}\sum_i (\theta - \tilde\theta_i),

    so that plain SGD with learning rate ε takes the Reptile step
    :math:`\theta \leftarrow \theta + \epsilon\,\frac{1}{B}\sum_i(\tilde\theta_i - \theta)`,
    and any other ``torch.optim`` optimiser can take it instead. One task per meta-batch is the
    serial form of the paper, several the batched form. :func:`linear_annealing` gives the
    seed's linearly decaying ε.
    """

    def __init__(
        self,
        model: nn.Module,
        inner_lr: float = 0.02,
        inner_steps: int = 5,
        inner_optimizer: str = "sgd",
        engine: str = "auto",
        batch_norm: str = "running",
    ) -> None:
        super().__init__(
            model,
            inner_lr=inner_lr,
            inner_steps=inner_steps,
            inner_optimizer=inner_optimizer,
            engine=engine,
            batch_norm=batch_norm,
        )

    @property
    def name(self) -> str:
        return "reptile"

    def meta_backward(self, tasks: Sequence[Task], *, scale: float | None = None) -> MetaMetrics:
        """Accumulate :math:`\\frac{1}{B}\\sum_i(\\theta - \\tilde\\theta_i)` into ``.grad``."""
        tasks, weight = _check_tasks(tasks, scale)
        theta = dict(self.model.named_parameters())

        def step(task: Task, index: int, weight: float) -> tuple[torch.Tensor, ...]:
            before = self._inner_loop(task, index, self.inner_steps, create_graph=False)
            adapted = {n: p.unsqueeze(0) for n, p in self.model.named_parameters()}
            _add_reptile_direction(theta, adapted, weight)
            with torch.no_grad():
                query = _scalar(task.query_loss(self.model), "query_loss", index, grad=False)
            assert before is not None
            return before, query

        return self._run(
            tasks,
            self._compiled_or(
                lambda: self._meta_backward_vmap(tasks, weight),  # type: ignore[arg-type]
                tasks,
                weight,
                "reptile",
            ),
            lambda: self._per_task(tasks, weight, step),  # type: ignore[arg-type]
        )

    def _meta_backward_vmap(self, tasks: BatchedTasks, weight: float) -> MetaMetrics:
        params, fixed, before = self._adapt_vmap(tasks, self.inner_steps, create_graph=False)
        assert before is not None
        _add_reptile_direction(dict(self.model.named_parameters()), params, weight)
        forward = self._forward(params, fixed)
        with torch.no_grad():
            query = check_losses(tasks.query_losses(forward), len(tasks), "query_losses")
        return MetaMetrics(before, self._support_after_vmap(tasks, forward), query)


def _backward_query(query: torch.Tensor, weight: float) -> None:
    """MAML's outer rule, for either engine: backward of :math:`w\\sum_i \\mathcal{L}^q_i(\\theta'_i)`
    (``query`` holds one task's loss, or ``[B]`` of them), which adds each task's meta-gradient,
    weighted by ``w``, to ``.grad`` of θ (and of Meta-SGD's α)."""
    (query.sum() * weight).backward()


def _add_reptile_direction(
    theta: Mapping[str, nn.Parameter], adapted: Mapping[str, torch.Tensor], weight: float
) -> None:
    """Reptile's outer rule, for either engine: add :math:`w\\sum_i(\\theta - \\tilde\\theta_i)` to
    ``.grad`` of each trainable θ. ``adapted`` holds the adapted parameters with a leading task
    axis (``[B, ...]``; the loop engine passes one task as ``[1, ...]``)."""
    for name, p in theta.items():
        if p.requires_grad:
            direction = (p.detach() - adapted[name].detach()).sum(0) * weight
            p.grad = direction if p.grad is None else p.grad + direction


def linear_annealing(
    optimizer: torch.optim.Optimizer, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """The Reptile seed's outer schedule: ε_k = ε_0 (1 − k / total_steps)."""
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps!r}")
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda k: max(0.0, 1.0 - k / total_steps))


def _check_task(task: object, index: int) -> None:
    if not is_task(task):
        raise TypeError(
            f"task {index} ({type(task).__name__}) does not implement the Task protocol: "
            "it needs support_loss(model) and query_loss(model)"
        )


def _check_tasks(tasks: Sequence[Task], scale: float | None) -> tuple[Sequence[Task], float]:
    """The validated meta-batch (a list, unless it is a BatchedTasks) and each task's weight."""
    if is_task(tasks):
        raise TypeError("tasks must be a sequence of tasks; wrap a single task in a list")
    if not is_batched(tasks):
        tasks = list(tasks)
    if len(tasks) == 0:
        raise ValueError("tasks is empty: a meta-batch needs at least one task")
    if scale is not None:
        check_real("scale", scale, low=0, low_open=True)
    return tasks, 1.0 / len(tasks) if scale is None else float(scale)


def _scalar(loss: object, what: str, index: int, *, grad: bool = True) -> torch.Tensor:
    if not isinstance(loss, torch.Tensor):
        raise TypeError(f"{what} of task {index} returned {type(loss).__name__}, expected a Tensor")
    if loss.numel() != 1 or loss.dim() > 1:
        raise ValueError(
            f"{what} of task {index} returned a tensor of shape {tuple(loss.shape)}; "
            "expected a scalar (reduce it, e.g. with .mean())"
        )
    if grad and not loss.requires_grad:
        raise ValueError(
            f"{what} of task {index} does not depend on the model's parameters "
            "(its result has requires_grad=False)"
        )
    return loss.reshape(())
