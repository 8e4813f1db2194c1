"""The interface every algorithm shares ([`MetaLearner`][metaopt.MetaLearner]), its metrics, and the
engines.

A subclass supplies its outer rule (``meta_backward``) and, where it differs from plain
gradient descent in the inner loop, its inner update and learned state; the base class runs the
inner loop on either engine, adapts for evaluation, and keeps the model exactly restored.
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

from metaopt.algorithms.checks import check_task, scalar_loss
from metaopt.algorithms.subset import Adapt, adapt_mask, resolve_adapt
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
from metaopt.inner import INNER_OPTIMIZERS, InnerOptimizer, inner_transform
from metaopt.isolation import MISNESTED, OneThread, isolated, leave_in_order, naming_task
from metaopt.options import ENGINES, check_choice, check_int, check_real
from metaopt.task import BatchedForward, BatchedTasks, Task, is_batched


class MetaMetrics:
    """Per-task losses of one ``meta_backward`` call, each a 1-D tensor with one entry per task.

    Attributes:
        support_before: support loss at θ, before adaptation.
        support_after: support loss at the adapted parameters θ'. Computed on first access
            (one more forward pass per task, or for RL one more round of sampling), so a caller
            that never reads it does not pay for it; the loop engine keeps a detached copy of
            each task's adapted parameters for it.
        query: query loss at θ'. Computed on first access where the meta-gradient does not need
            it (Reptile on the compiled engine); otherwise it comes with the meta-gradient.
        extra: The algorithm's own numbers of this call (iMAML: its solves' residuals), logged
            beside the means.
        dropped: Whether the algorithm left ``.grad`` as it was, asking that this meta-batch
            take no outer step (iMAML's ``on_solve_failure="skip"``).
    """

    __slots__ = ("_query", "_support_after", "dropped", "extra", "support_before")

    def __init__(
        self,
        support_before: torch.Tensor,
        support_after: torch.Tensor | Callable[[], torch.Tensor],
        query: torch.Tensor | Callable[[], torch.Tensor],
    ) -> None:
        self.support_before = support_before
        self._support_after = support_after
        self._query = query
        self.extra: dict[str, float] = {}
        self.dropped = False

    @property
    def support_after(self) -> torch.Tensor:
        """Per-task support loss after adaptation, ``[B]``; computed on first access."""
        if callable(self._support_after):
            self._support_after = self._support_after()
        return self._support_after

    @property
    def query(self) -> torch.Tensor:
        """Per-task query loss after adaptation, ``[B]``."""
        if callable(self._query):
            self._query = self._query()
        return self._query

    def means(self) -> dict[str, float]:
        """Task-averaged values, for logging."""
        return {
            "support_before": self.support_before.mean().item(),
            "support_after": self.support_after.mean().item(),
            "query": self.query.mean().item(),
            **self.extra,
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
            when the meta-batch is a [`BatchedTasks`][metaopt.BatchedTasks] and the model passed
            [`metaopt.engine.can_vectorise`][metaopt.engine.can_vectorise].
    """

    def __init__(
        self,
        model: nn.Module,
        inner_lr: float,
        inner_steps: int,
        inner_optimizer: str = "sgd",
        engine: str = "auto",
        batch_norm: str = "running",
        adapt: Adapt = None,
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
        #: Names of the parameters the inner loop adapts (``None``: all; ANIL, `subset`).
        self.adapted = resolve_adapt(model, adapt)
        if self.adapted is not None and engine == "compiled":
            raise ValueError(
                "engine='compiled' adapts every parameter; with adapt= (a subset) use "
                "engine='auto', 'vmap' or 'loop'"
            )
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
        self.inner_optimizer = InnerOptimizer(
            model, self._inner_transform(), adapt_mask(model, self.adapted)
        )

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Every algorithm's ``meta_backward`` runs under the learner's one-thread guard."""
        super().__init_subclass__(**kwargs)
        OneThread.guard(cls, "meta_backward")

    @property
    def _one_thread(self) -> OneThread:  # created on first use: older pickles lack it
        return self.__dict__.setdefault("_guard", OneThread())

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
        same meta-iteration compiled (`metaopt.compiled.compiled_meta_backward`)."""
        if self.engine != "compiled":
            return eager
        batch: BatchedTasks = tasks  # type: ignore[assignment]
        first_order = bool(getattr(self, "first_order", False))
        return lambda: MetaMetrics(
            *compiled_meta_backward(
                self,
                batch,
                weight,
                kind,
                steps=self.inner_steps,
                first_order=first_order,
                inner_optimizer=self.inner_optimizer_name,
                inner_lr=self.inner_lr,
                batch_norm=self.batch_norm,
                positive_rates=bool(getattr(self, "positive_rates", False)),
            )
        )

    def _adapt_vmap(self, tasks: BatchedTasks, steps: int, *, create_graph: bool) -> Adapted:
        """The vectorised engine's inner loop with this algorithm's update rule: the last state
        of `metaopt.engine.inner_path`."""
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
            adapted=self.adapted,
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
        ``scale``) into ``.grad`` of [`meta_parameters`][metaopt.MetaLearner.meta_parameters],
        restore the model, return metrics."""
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
        check_task(task, 0)
        open_contexts, frame = self.__dict__.setdefault("_adapting", []), {}
        # BatchNorm's mode outside isolation, whose restore() puts back the modes it found.
        with self._one_thread.held(self.name, "adapt"):
            with (
                batch_norm_mode(self.model, self.batch_norm),
                isolated(self.model, self.inner_optimizer) as restore,
            ):
                frame["restore"] = restore
                open_contexts.append(frame)
                try:
                    self._inner_loop(task, 0, steps, create_graph=create_graph)
                    yield self.model
                finally:
                    misnested = leave_in_order(open_contexts, frame)
            frame.get("then", lambda: None)()  # an outer context left first: its state again
            if misnested:
                raise RuntimeError(MISNESTED)

    def adapt_batch(
        self, tasks: BatchedTasks, steps: int | None = None, *, create_graph: bool = False
    ) -> BatchedForward:
        """All tasks of ``tasks`` adapted at once (the vectorised engine): evaluation at scale.

        Returns ``forward(x)``, which applies task b's adapted parameters to ``x[b]`` (see
        [`metaopt.task.BatchedTasks`][metaopt.BatchedTasks]). The model itself is not touched.
        ``steps=0`` gives the unadapted parameters, one copy per task.

        Raises:
            TypeError: when ``tasks`` is not a [`BatchedTasks`][metaopt.BatchedTasks] or the model
                cannot be vectorised (buffers updated in training mode).
        """
        steps = self._batch_steps(tasks, steps)
        params, fixed, _ = self._adapt_vmap(tasks, steps, create_graph=create_graph)
        return self._forward(params, fixed)

    def adapt_batch_path(self, tasks: BatchedTasks, steps: int) -> Iterator[BatchedForward]:
        """[`adapt_batch`][metaopt.MetaLearner.adapt_batch]'s ``forward`` after 0, 1, ..., ``steps``
        inner steps, one after the other from a single adaptation (first-order: no graph through the
        inner gradients), for an evaluation that reads the metric after several numbers of steps.

        Raises:
            TypeError: as [`adapt_batch`][metaopt.MetaLearner.adapt_batch].
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
            loss = scalar_loss(task.support_loss(self.model), "support_loss", index)
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
            check_task(task, index)
        before, query, adapted = [], [], []
        with (
            batch_norm_mode(self.model, self.batch_norm),
            isolated(self.model, self.inner_optimizer) as restore,
        ):
            for index, task in enumerate(tasks):
                with naming_task(index):  # torch's dtype errors do not say which task
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
                    losses.append(scalar_loss(loss, "support_loss", index, grad=False))
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
        """The algorithm's name in `metaopt.options.ALGORITHMS` (``--algo``)."""
        raise NotImplementedError

    @property
    def exact_meta_gradient(self) -> bool:
        """Whether ``meta_backward`` gives the exact gradient of the meta-loss
        $\\frac1B\\sum_i \\mathcal{L}^q_i(\\theta'_i)$ (second-order MAML and Meta-SGD), which
        finite differences of the meta-loss can check."""
        return False

    def rate_parameters(self) -> list[nn.Parameter]:
        """Meta-learned inner learning rates, one per model parameter in ``parameters()`` order
        (Meta-SGD's α, or ρ with α = softplus(ρ) under ``positive_rates``; the rates themselves
        are [`inner_sgd_rates`][metaopt.MetaLearner.inner_sgd_rates]); empty for the algorithms with
        a fixed inner learning rate."""
        return []

    def learned_state(self) -> dict[str, Any]:
        """What a checkpoint needs besides ``model.state_dict()`` (Meta-SGD: ``inner_lrs``)."""
        return {}

    def load_learned_state(self, state: Mapping[str, Any]) -> None:
        """Restore what [`learned_state`][metaopt.MetaLearner.learned_state] returned (extra keys in
        ``state`` are ignored)."""

    def inner_sgd_rates(self) -> float | list[torch.Tensor] | None:
        """The step sizes of the inner update when it is plain or learned-rate SGD: the scalar
        ``inner_lr``, or Meta-SGD's rates (detached, ``parameters()`` order); ``None`` for any
        other inner optimiser (evaluate with [`adapt`][metaopt.MetaLearner.adapt] then)."""
        return self.inner_lr if self.inner_optimizer_name == "sgd" else None

    def describe(self) -> dict[str, Any]:
        """How this algorithm adapts, for reports and eval.json."""
        return {"rule": self.inner_optimizer_name, "lr": self.inner_lr, **self._adapt_report()}

    def _adapt_report(self) -> dict[str, Any]:
        return {} if self.adapted is None else {"adapt": sorted(self.adapted)}

    def untrained_baseline(self, model: nn.Module) -> MetaLearner:
        """A learner that adapts ``model`` the way this one adapts, minus anything meta-learned:
        the inner optimiser at ``inner_lr`` (Meta-SGD's rates start there)."""
        from metaopt.algorithms.maml import MAML  # the subclass module imports this one

        name, norm, adapt = self.inner_optimizer_name, self.batch_norm, self.adapted
        return MAML(model, self.inner_lr, inner_optimizer=name, batch_norm=norm, adapt=adapt)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(inner_lr={self.inner_lr}, inner_steps={self.inner_steps}, "
            f"inner_optimizer={self.inner_optimizer_name!r}, engine={self.engine!r}, "
            f"batch_norm={self.batch_norm!r}"
            + ("" if self.adapted is None else f", adapt={sorted(self.adapted)}")
            + ")"
        )
