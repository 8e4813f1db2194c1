"""The learner every algorithm is ([`MetaLearner`][metaopt.MetaLearner]) and its metrics.

A learner binds a model, a rule (`metaopt.rules`: the algorithm's inner update and outer rule)
and an engine, which runs the rule: the loop engine (`metaopt.looped`), the vectorised one
(`metaopt.engine`), its compiled form (`metaopt.compiled`) or checkpointed unrolling
(`metaopt.unroll`). It adapts for evaluation, keeps the model exactly restored, and owns what
the rule meta-learns besides θ and the compiled engine's functions.
"""

from __future__ import annotations

import warnings
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from torchopt.base import GradientTransformation

from metaopt.algorithms.subset import Adapt, adapt_mask, resolve_adapt
from metaopt.batched import batched_outer, inner_path, multi_step_outer
from metaopt.checks import check_step_weights, check_task, check_tasks
from metaopt.compiled import CompiledMetaGradient, compiled_meta_backward
from metaopt.engine import (
    BATCH_NORM_MODES,
    Adapted,
    batch_norm_mode,
    batched_forward,
    can_vectorise,
    is_batching_failure,
)
from metaopt.inner import INNER_OPTIMIZERS, InnerOptimizer
from metaopt.isolation import MISNESTED, OneThread, isolated, leave_in_order
from metaopt.looped import inner_loop, looped_meta_backward
from metaopt.metrics import MetaMetrics
from metaopt.nn import at_inner_step, reads_inner_step
from metaopt.options import ENGINES, check_choice, check_int, check_real
from metaopt.rules.base import Rule
from metaopt.rules.maml import MAMLRule
from metaopt.task import BatchedForward, BatchedTasks, Task, is_batched
from metaopt.unroll import checkpointed_adapt


class MetaLearner:
    """A model, a rule and an engine: validation, the inner loop, the engines and ``adapt``.

    ``MetaLearner(model, rule, inner_lr=..., ...)`` runs any `metaopt.rules.Rule`; [`MAML`][metaopt.MAML],
    [`MetaSGD`][metaopt.MetaSGD], [`Reptile`][metaopt.Reptile] and [`IMAML`][metaopt.IMAML] are
    learners that build their rule from their own keyword arguments.

    Attributes:
        rule: The algorithm (`metaopt.rules.Rule`).
        last_engine: The engine the last ``meta_backward`` ran on, ``"loop"``, ``"vmap"`` or
            ``"compiled"``
            (``None`` before the first call). With ``engine="auto"`` it is ``"vmap"`` exactly
            when the meta-batch is a [`BatchedTasks`][metaopt.BatchedTasks] and the model passed
            [`metaopt.engine.can_vectorise`][metaopt.engine.can_vectorise].
        compiled_cache: The compiled engine's functions this learner has built, by configuration.
    """

    #: Checkpointed unrolling's held states (``None``: the plain unroll).
    unroll_checkpoints: int | None = None

    def __init__(
        self,
        model: nn.Module,
        rule: Rule,
        *,
        inner_lr: float = 0.01,
        inner_steps: int = 1,
        adapt: Adapt = None,
        inner_optimizer: str = "sgd",
        unroll_checkpoints: int | None = None,
        engine: str = "auto",
        batch_norm: str = "running",
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if not isinstance(rule, Rule):
            raise TypeError(f"rule must be a metaopt.rules.Rule, got {type(rule).__name__}")
        if not any(p.requires_grad for p in model.parameters()):
            raise ValueError("model has no trainable parameters (none with requires_grad=True)")
        check_real("inner_lr", inner_lr, low=0, low_open=True)
        check_int("inner_steps", inner_steps, 1)
        check_choice("inner_optimizer", inner_optimizer, INNER_OPTIMIZERS)
        check_choice("engine", engine, ENGINES)
        check_choice("batch_norm", batch_norm, BATCH_NORM_MODES)
        reader = reads_inner_step(model) if engine == "compiled" else None
        if reader is not None:
            raise ValueError(
                f"engine='compiled' cannot run {reader}, whose forward reads the inner-step index "
                "(per-step BatchNorm); use engine='auto', 'vmap' or 'loop'"
            )
        if engine == "compiled" and not rule.compiles:
            raise ValueError(
                f"{type(self).__name__} has no compiled engine; use engine='auto', 'vmap' or 'loop'"
            )
        #: Names of the parameters the inner loop adapts (``None``: all; ANIL, `subset`).
        self.adapted = resolve_adapt(model, adapt)
        if self.adapted is not None and engine == "compiled":
            raise ValueError(
                "engine='compiled' adapts every parameter; with adapt= (a subset) use "
                "engine='auto', 'vmap' or 'loop'"
            )
        self.rule = rule
        self.engine = engine
        self.batch_norm = batch_norm
        self.last_engine: str | None = None
        self._refused: str | None = None  # why auto stopped trying the vectorised engine
        self._warned = False  # auto's fall-back to the loop engine is said once
        self.model = model
        self.inner_lr = float(inner_lr)
        self.inner_steps = inner_steps
        self.inner_optimizer_name = inner_optimizer
        self.compiled_cache: dict[tuple[Any, ...], CompiledMetaGradient] = {}
        #: The compiled function of the last compiled call (``None`` before one).
        self.last_compiled: CompiledMetaGradient | None = None
        adapts = adapt_mask(model, self.adapted) or [True] * len(list(model.parameters()))
        self.learned = nn.ParameterList(
            nn.Parameter(t.detach(), requires_grad=t.requires_grad)
            for t in rule.learned(list(model.parameters()), adapts, self.inner_lr)
        )
        self.inner_optimizer = InnerOptimizer(
            model, self._inner_transform(), adapt_mask(model, self.adapted)
        )
        self.unroll_checkpoints = check_unroll_checkpoints(unroll_checkpoints, rule, engine)
        #: The multi-step loss's weights, one per inner step (``None``: the query loss after
        #: the last step alone); a training schedule sets them per iteration.
        self.step_weights: tuple[float, ...] | None = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Every algorithm's ``meta_backward`` runs under the learner's one-thread guard."""
        super().__init_subclass__(**kwargs)
        OneThread.guard(cls, "meta_backward")

    @property
    def _one_thread(self) -> OneThread:  # created on first use: older pickles lack it
        return self.__dict__.setdefault("_guard", OneThread())

    def learned_tensors(self) -> list[nn.Parameter]:
        """What the rule meta-learns besides θ (Meta-SGD's rates), as parameters, read from the
        ParameterList's registry (its iterator indexes by string and costs more than a small
        compiled meta-iteration's own Python)."""
        return list(self.learned._parameters.values())  # type: ignore[arg-type]

    def _inner_transform(self) -> GradientTransformation:
        """The inner update rule. Every engine hands it one gradient per model parameter, in
        ``parameters()`` order (``None`` for a frozen parameter)."""
        return self.rule.transform(self.inner_optimizer_name, self.inner_lr, self.learned_tensors())

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

    def meta_backward(self, tasks: Sequence[Task], *, scale: float | None = None) -> MetaMetrics:
        """Adapt to each task, accumulate the meta-gradient (averaged over the tasks, or times
        ``scale``) into ``.grad`` of [`meta_parameters`][metaopt.MetaLearner.meta_parameters],
        restore the model, return metrics.

        Args:
            tasks: The meta-batch.
            scale: Weight of each task's share (default ``1 / len(tasks)``); a sharded
                meta-batch passes ``1 / global_batch``.
        """
        tasks, weight = check_tasks(tasks, scale)
        diagnostic: list[torch.Tensor | None] = [None]
        step_weights = check_step_weights(
            self.__dict__.get("step_weights"), self.inner_steps, self.rule.outer,
            self.engine == "compiled" or self.unroll_checkpoints is not None,
        )  # fmt: skip

        def batched() -> MetaMetrics:
            batch: BatchedTasks = tasks  # type: ignore[assignment]
            if self.engine == "compiled":
                engine, fields = compiled_meta_backward(
                    self.compiled_cache, self.model, self.rule, self.learned_tensors(), batch,
                    weight, steps=self.inner_steps, inner_optimizer=self.inner_optimizer_name,
                    inner_lr=self.inner_lr, batch_norm=self.batch_norm,
                )  # fmt: skip
                self.last_compiled, diagnostic[0] = engine, engine.diagnostic
                return MetaMetrics(*fields)
            if step_weights is not None:
                create_graph = self.rule.second_order
                path = list(self._vmap_path(batch, self.inner_steps, create_graph=create_graph))
                fields = multi_step_outer(
                    self.model, batch, path, step_weights, weight, batch_norm=self.batch_norm
                )
                return MetaMetrics(*fields)
            adapted = self._adapt_batched(batch)
            fields = batched_outer(
                self.rule.outer, self.model, batch, adapted, weight, batch_norm=self.batch_norm,
                steps=self.inner_steps,
            )  # fmt: skip
            return MetaMetrics(*fields)

        def looped() -> MetaMetrics:
            if self.unroll_checkpoints is not None:
                reason = can_vectorise(self.model, tasks, self.batch_norm) or self._refused
                raise TypeError(
                    "unroll_checkpoints runs on the vectorised engine, but this meta-batch went "
                    f"to the loop engine ({reason}); use unroll_checkpoints=None"
                )
            return MetaMetrics(*looped_meta_backward(self, tasks, weight))

        metrics = self._run(tasks, batched, looped)
        if type(self.rule).warning is not Rule.warning and not self.__dict__.get("_warned_rule"):
            names = [n for n, _ in self.model.named_parameters()]
            warning = self.rule.warning(self.learned_tensors(), names, diagnostic[0])
            if warning is not None:
                self._warned_rule = True
                # past meta_backward and its one-thread guard: the caller
                warnings.warn(warning, stacklevel=3)
        return metrics

    def _adapt_batched(self, tasks: BatchedTasks) -> Adapted:
        """The batched inner loop of the meta-gradient: plain, or with checkpointed unrolling."""
        if self.unroll_checkpoints is None:
            create_graph = self.rule.second_order and self.rule.outer == "query-gradient"
            return self._adapt_vmap(tasks, self.inner_steps, create_graph=create_graph)
        return checkpointed_adapt(
            self.model,
            tasks,
            self._inner_transform(),
            self.inner_steps,
            self.unroll_checkpoints,
            extra=[t for t in self.learned_tensors() if t.requires_grad],
            batch_norm=self.batch_norm,
            adapted=self.adapted,
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
        self,
        params: dict[str, torch.Tensor],
        fixed: dict[str, torch.Tensor],
        steps: int | None = None,
    ) -> BatchedForward:
        return batched_forward(self.model, params, fixed, batch_norm=self.batch_norm, step=steps)

    def meta_parameters(self) -> list[nn.Parameter]:
        """The tensors the outer optimiser updates: the model's trainable parameters θ, then what
        the rule meta-learns besides them (Meta-SGD's rates)."""
        theta = [p for p in self.model.parameters() if p.requires_grad]
        return theta + [t for t in self.learned_tensors() if t.requires_grad]

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
                    with at_inner_step(steps):  # the adapted model's forwards (per-step modules)
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
        return self._forward(params, fixed, steps)

    def adapt_batch_path(self, tasks: BatchedTasks, steps: int) -> Iterator[BatchedForward]:
        """[`adapt_batch`][metaopt.MetaLearner.adapt_batch]'s ``forward`` after 0, 1, ..., ``steps``
        inner steps, one after the other from a single adaptation (first-order: no graph through the
        inner gradients), for an evaluation that reads the metric after several numbers of steps.

        Raises:
            TypeError: as [`adapt_batch`][metaopt.MetaLearner.adapt_batch].
        """
        path = self._vmap_path(tasks, self._batch_steps(tasks, steps), create_graph=False)
        return (self._forward(params, fixed, k) for k, (params, fixed, _) in enumerate(path))

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
        return inner_loop(self, task, index, steps, create_graph=create_graph)

    # -- what code outside the algorithms reads, instead of checking their types -------------

    @property
    def name(self) -> str:
        """The algorithm's name (``--algo``): its rule's."""
        return self.rule.name

    @property
    def exact_meta_gradient(self) -> bool:
        """Whether ``meta_backward`` gives the exact gradient of the meta-loss
        $\\frac1B\\sum_i \\mathcal{L}^q_i(\\theta'_i)$ (second-order MAML and Meta-SGD), which
        finite differences of the meta-loss can check."""
        return self.rule.exact

    def rate_parameters(self) -> list[nn.Parameter]:
        """Meta-learned inner learning rates, one per model parameter in ``parameters()`` order
        (Meta-SGD's α, or ρ with α = softplus(ρ) under ``positive_rates``; the rates themselves
        are [`inner_sgd_rates`][metaopt.MetaLearner.inner_sgd_rates]); empty for the algorithms with
        a fixed inner learning rate."""
        return []

    #: The key of `learned_state` under which a checkpoint holds the rule's learned tensors.
    LEARNED_KEY = "learned"

    def learned_state(self) -> dict[str, Any]:
        """What a checkpoint needs besides ``model.state_dict()``: the rule's learned tensors
        (Meta-SGD: ``inner_lrs``); empty when the rule learns nothing else."""
        learned = self.learned_tensors()
        return {self.LEARNED_KEY: [t.detach().clone() for t in learned]} if learned else {}

    def load_learned_state(self, state: Mapping[str, Any]) -> None:
        """Restore what [`learned_state`][metaopt.MetaLearner.learned_state] returned (extra keys in
        ``state`` are ignored)."""
        learned = self.learned_tensors()
        if learned:
            with torch.no_grad():
                for tensor, saved in zip(learned, state[self.LEARNED_KEY], strict=True):
                    tensor.copy_(saved)

    def inner_sgd_rates(self) -> float | list[torch.Tensor] | None:
        """The step sizes of the inner update when it is plain or learned-rate SGD: the scalar
        ``inner_lr``, or Meta-SGD's rates (detached, ``parameters()`` order); ``None`` for any
        other inner optimiser (evaluate with [`adapt`][metaopt.MetaLearner.adapt] then)."""
        return self.inner_lr if self.inner_optimizer_name == "sgd" else None

    def describe(self) -> dict[str, Any]:
        """How this algorithm adapts, for reports and eval.json."""
        learned = self.learned_tensors()
        rule = self.rule.describe(self.inner_optimizer_name, self.inner_lr, learned)
        return {**rule, **self._adapt_report()}

    def _adapt_report(self) -> dict[str, Any]:
        return {} if self.adapted is None else {"adapt": sorted(self.adapted)}

    def untrained_baseline(self, model: nn.Module) -> MetaLearner:
        """A learner that adapts ``model`` the way this one adapts, minus anything meta-learned:
        the inner optimiser at ``inner_lr`` (Meta-SGD's rates start there)."""
        name, norm, adapt = self.inner_optimizer_name, self.batch_norm, self.adapted
        return MetaLearner(
            model, MAMLRule(), inner_lr=self.inner_lr, inner_optimizer=name, batch_norm=norm,
            adapt=adapt,
        )  # fmt: skip

    def __repr__(self) -> str:
        rule = "" if type(self) is not MetaLearner else f"rule={self.rule!r}, "
        return (
            f"{type(self).__name__}({rule}inner_lr={self.inner_lr}, inner_steps={self.inner_steps}, "
            f"inner_optimizer={self.inner_optimizer_name!r}, engine={self.engine!r}, "
            f"batch_norm={self.batch_norm!r}"
            + ("" if self.adapted is None else f", adapt={sorted(self.adapted)}")
            + ")"
        )


OneThread.guard(MetaLearner, "meta_backward")  # its subclasses' are guarded as they are defined


def check_unroll_checkpoints(value: int | None, rule: Rule, engine: str) -> int | None:
    """``unroll_checkpoints`` validated: ``None`` or an integer ≥ 1, for a second-order unroll on
    an engine that can recompute it (the vectorised one: ``auto`` or ``vmap``)."""
    if value is None:
        return None
    check_int("unroll_checkpoints", value, 1)
    if not (rule.second_order and rule.outer == "query-gradient"):
        raise ValueError(
            "unroll_checkpoints applies to a second-order unroll; first-order MAML keeps no graph "
            "of its inner steps (its memory does not grow with them): use unroll_checkpoints=None"
        )
    if engine not in ("auto", "vmap"):
        raise ValueError(
            f"unroll_checkpoints runs on the vectorised engine, not engine={engine!r}: use "
            "engine='auto' or 'vmap', or unroll_checkpoints=None"
        )
    return value
