"""The compiled engine: one ``torch.compile``d function from θ and a meta-batch to the meta-gradient.

The vectorised engine (:mod:`metaopt.engine`) runs each meta-iteration as a few hundred small
eager operations, and on small models nearly all of its time is dispatch overhead. This engine
writes the whole meta-iteration as a pure function of tensors and compiles it once:

* the inner loop holds the parameters with a task axis, ``θ_b = θ.expand(B, ...)``, and takes
  each step's per-task gradients as ``torch.func.grad`` of ``Σ_b L^s_b(θ_b)`` (task b's loss
  depends on ``θ_b`` only, so row b of that gradient is task b's own), then applies the
  algorithm's inner update (SGD, Adam, or Meta-SGD's ``θ − α ∘ g``) functionally;
* MAML and Meta-SGD take ``torch.func.grad`` of the meta-loss ``Σ_b L^q_b(θ'_b)`` with respect to
  θ (and α), differentiating through the inner ``grad`` (second order), or through the inner
  steps with their gradients detached (first order: ``∂θ'_b/∂θ = I``, as the other engines);
* Reptile needs no outer derivative: its meta-gradient is ``Σ_b (θ − θ̃_b)``.

The compiled function returns the unweighted sums; :meth:`CompiledMetaGradient.__call__` scales
them by the task weight and accumulates them into ``.grad`` eagerly, so a change of ``scale``
never recompiles. The per-task metrics come out of the same function: the support losses at θ,
the query losses, and the support losses at the adapted parameters (``support_after``, one more
forward pass that the eager engines defer until it is read, and which compiled costs little).

**What recompiles.** The function is compiled with static shapes (``dynamic=False``) and
``torch.compile``'s guards decide when to compile again: a different number of tasks, support,
query or parameter shape, dtype or device; a different type of meta-batch, or a change of a
Python value the batch's losses read (e.g. ``TaskBatch.minibatch``); the model's modules
switching train/eval mode. A training run sees one shape for every meta-iteration and compiles
once; evaluation on a meta-batch of another size compiles once more. Every compile after the
first is counted (:attr:`CompiledMetaGradient.compiles`) and warned about once, since a run
whose shapes change every iteration would compile every iteration and should use ``vmap``.
"""

from __future__ import annotations

import time
import types
import warnings
import weakref
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn
from torchopt.base import GradientTransformation

from metaopt.engine import (
    _Layout,
    batch_norm_mode,
    batched_forward,
    check_losses,
    static_layout,
)
from metaopt.inner import inner_transform, learned_rate_sgd
from metaopt.task import BatchedTasks

__all__ = [
    "CompiledMetaGradient",
    "MetaGradientResult",
    "compile_options",
    "compile_record",
    "compile_seconds",
    "compiled_meta_backward",
    "engine_of",
    "functional_meta_gradient",
]

Tensors = tuple[torch.Tensor, ...]
#: What the functional meta-gradient returns: the meta-gradient's sums over tasks (θ's, then the
#: rates' for Meta-SGD), the support losses at θ ``[B]``, the query losses ``[B]`` and the
#: support losses at the adapted parameters ``[B]`` (all detached).
MetaGradientResult = tuple[Tensors, torch.Tensor, torch.Tensor, torch.Tensor]


def compile_options() -> dict[str, Any]:
    """``torch.compile`` keyword arguments of the engine: inductor, static shapes."""
    return {"backend": "inductor", "dynamic": False, "fullgraph": True}


def functional_meta_gradient(
    model: nn.Module,
    *,
    kind: str,
    steps: int,
    first_order: bool,
    inner_optimizer: str,
    inner_lr: float,
    learned_rates: bool,
    batch_norm: str = "running",
) -> Callable[[Tensors, Tensors, dict[str, torch.Tensor], BatchedTasks], MetaGradientResult]:
    """The meta-iteration of one algorithm as a pure function (eager; compile it to go fast).

    Returns ``f(theta, rates, shared, tasks)``: ``theta`` the trainable parameters (detached,
    ``named_parameters()`` order), ``rates`` Meta-SGD's rates for them (empty otherwise),
    ``shared`` the frozen parameters and buffers, ``tasks`` a :class:`~metaopt.task.BatchedTasks`.

    Args:
        model: The network; read for its structure only (``functional_call`` gets the tensors).
        kind: ``"maml"`` (MAML, first-order MAML, Meta-SGD) or ``"reptile"``.
        steps: Inner steps.
        first_order: Treat the inner gradients as constants (MAML only).
        inner_optimizer: ``"sgd"`` or ``"adam"`` (ignored with ``learned_rates``).
        inner_lr: The inner learning rate.
        learned_rates: Meta-SGD's update ``θ − α ∘ g`` with the rates ``rates``.
        batch_norm: :data:`metaopt.engine.BATCH_NORM_MODES`.
    """
    if kind not in ("maml", "reptile"):
        raise ValueError(f"kind must be 'maml' or 'reptile', got {kind!r}")
    layout = static_layout(model, batch_norm, "the compiled engine", "engine='vmap'")
    names = layout.trainable

    fixed_rule = None if learned_rates else inner_transform(inner_optimizer, inner_lr)

    def transform(rates: Tensors) -> GradientTransformation:
        # Built outside the traced function: TorchOpt's constructors take a lock dynamo cannot
        # trace. Meta-SGD's rule closes over the rates, which are inputs, so it is built inside.
        return learned_rate_sgd(rates) if fixed_rule is None else fixed_rule

    def forward(flat: Tensors, shared: dict[str, torch.Tensor]) -> Any:
        params = dict(zip(names, flat, strict=True))
        return batched_forward(model, params, shared, batch_norm=batch_norm, slots=layout.slots)

    def adapt(
        theta: Tensors, rates: Tensors, shared: dict[str, torch.Tensor], tasks: BatchedTasks
    ) -> tuple[Tensors, torch.Tensor]:
        num_tasks = len(tasks)
        flat = tuple(p.expand(num_tasks, *p.shape) for p in theta)
        rule = transform(rates)
        state = rule.init(flat)
        before = None
        for step in range(steps):

            def support(flat: Tensors, step: int = step) -> tuple[torch.Tensor, torch.Tensor]:
                losses = tasks.support_losses(forward(flat, shared), step)
                return losses.sum(), losses

            grads, losses = torch.func.grad(support, has_aux=True)(flat)
            if before is None:
                before = losses
            if first_order:
                grads = tuple(g.detach() for g in grads)
            updates, state = rule.update(grads, state, params=flat, inplace=False)
            flat = tuple(p + u for p, u in zip(flat, updates, strict=True))
        assert before is not None
        return flat, before.detach()

    def support_after(
        flat: Tensors, shared: dict[str, torch.Tensor], tasks: BatchedTasks
    ) -> torch.Tensor:
        return tasks.support_losses(forward(flat, shared), None).detach()

    def maml(
        theta: Tensors, rates: Tensors, shared: dict[str, torch.Tensor], tasks: BatchedTasks
    ) -> MetaGradientResult:
        def meta_loss(
            theta: Tensors, rates: Tensors
        ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
            flat, before = adapt(theta, rates, shared, tasks)
            query = tasks.query_losses(forward(flat, shared))
            after = support_after(tuple(p.detach() for p in flat), shared, tasks)
            return query.sum(), (before, query.detach(), after)

        (g_theta, g_rates), (before, query, after) = torch.func.grad(
            meta_loss, argnums=(0, 1), has_aux=True
        )(theta, rates)
        return tuple(g_theta) + tuple(g_rates), before, query, after

    def reptile(
        theta: Tensors, rates: Tensors, shared: dict[str, torch.Tensor], tasks: BatchedTasks
    ) -> MetaGradientResult:
        flat, before = adapt(theta, rates, shared, tasks)
        query = tasks.query_losses(forward(flat, shared))
        directions = tuple((p - q).sum(0) for p, q in zip(theta, flat, strict=True))
        return directions, before, query, support_after(flat, shared, tasks)

    return maml if kind == "maml" else reptile


class CompiledMetaGradient:
    """A meta-learner's compiled meta-iteration, compiled on first use and reused after.

    Call it with the meta-batch and the task weight: it accumulates ``weight ×`` the
    meta-gradient into ``.grad`` of θ (and Meta-SGD's rates) and returns the per-task support
    losses before adaptation, query losses and support losses after adaptation.

    Attributes:
        compiles: Graphs compiled so far (1 after the first call; more means recompiles).
        compile_seconds: Wall-clock time of the first call (tracing and compiling included).
        compile_cache: Where inductor's code for the first call came from: ``"cold"`` (it
            generated some), ``"warm"`` (all of it loaded from the persistent FX-graph cache),
            ``None`` before the first call or with a backend that has no such cache (``eager``).
    """

    def __init__(
        self,
        model: nn.Module,
        rates: Sequence[nn.Parameter],
        *,
        kind: str,
        steps: int,
        first_order: bool,
        inner_optimizer: str,
        inner_lr: float,
        batch_norm: str = "running",
        options: dict[str, Any] | None = None,
    ) -> None:
        self.model = model
        self.batch_norm = batch_norm
        with batch_norm_mode(model, batch_norm):
            layout = _Layout(model)
        self._layout = layout
        named = dict(model.named_parameters())
        self._theta = [named[n] for n in layout.trainable]
        index = {id(p): i for i, p in enumerate(model.parameters())}
        self._rates = [rates[index[id(p)]] for p in self._theta] if rates else []
        function = functional_meta_gradient(
            model,
            kind=kind,
            steps=steps,
            first_order=first_order,
            inner_optimizer=inner_optimizer,
            inner_lr=inner_lr,
            learned_rates=bool(rates),
            batch_norm=batch_norm,
        )
        # dynamo keeps its compiled graphs, and counts recompiles against its limit of 8, per
        # code object; every engine's function is a closure of the same code, so each gets a
        # copy of it, and a learner never evicts or counts against another's graphs.
        function = types.FunctionType(
            function.__code__.replace(),
            function.__globals__,
            function.__name__,
            function.__defaults__,
            function.__closure__,
        )
        self.compiles = 0
        self.compile_seconds: float | None = None
        self.compile_cache: str | None = None
        self._warned = False
        options = {**compile_options(), **(options or {})}
        self._inner_backend = options.pop("backend")
        self._compiled = torch.compile(function, backend=self._backend, **options)

    def _backend(self, graph: torch.fx.GraphModule, example_inputs: list[Any]) -> Any:
        """Inductor (or the chosen backend), counting compiles to see recompiles."""
        self.compiles += 1
        if self.compiles > 1 and not self._warned:
            self._warned = True
            warnings.warn(
                "the compiled engine compiled its meta-iteration again: the meta-batch's shapes, "
                "dtype or Python values (or the model's train/eval mode) changed. A run that "
                "changes them every iteration pays a compile each time; use engine='vmap' there",
                UserWarning,
                stacklevel=2,
            )
        backend = torch._dynamo.lookup_backend(self._inner_backend)
        return backend(graph, example_inputs)

    def __call__(
        self, tasks: BatchedTasks, weight: float
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        theta = tuple(p.detach() for p in self._theta)
        rates = tuple(r.detach() for r in self._rates)
        shared = {n: t.detach() for n, t in self._layout.shared.items()}
        start = time.perf_counter()
        first = self.compile_seconds is None
        cache = _fx_graph_cache() if first else (0, 0)
        try:
            with batch_norm_mode(self.model, self.batch_norm):
                sums, before, query, after = self._compiled(theta, rates, shared, tasks)
        except torch._dynamo.exc.Unsupported as error:
            # e.g. sampling with an explicit torch.Generator (the RL tasks): not traceable
            reason = str(error).strip().splitlines()[0]
            raise TypeError(
                f"engine='compiled' cannot trace this meta-batch's losses ({reason}); "
                "use engine='vmap'"
            ) from error
        if first:
            self.compile_seconds = time.perf_counter() - start
            hits, misses = (now - then for now, then in zip(_fx_graph_cache(), cache, strict=True))
            self.compile_cache = "cold" if misses else "warm" if hits else None
        num_tasks = len(tasks)
        before = check_losses(before, num_tasks, "support_losses")
        query = check_losses(query, num_tasks, "query_losses")
        after = check_losses(after, num_tasks, "support_losses")
        targets = self._theta + self._rates
        for p, total in zip(targets, sums, strict=True):
            direction = total * weight
            p.grad = direction if p.grad is None else p.grad + direction
        return before, query, after


def _fx_graph_cache() -> tuple[int, int]:
    """Inductor's FX-graph cache hits and misses so far in this process."""
    counts = torch._dynamo.utils.counters["inductor"]
    return counts["fxgraph_cache_hit"], counts["fxgraph_cache_miss"]


_ENGINES: weakref.WeakKeyDictionary[Any, dict[tuple[Any, ...], CompiledMetaGradient]] = (
    weakref.WeakKeyDictionary()
)


def compiled_meta_backward(
    algo: Any,
    tasks: BatchedTasks,
    weight: float,
    kind: str,
    *,
    steps: int,
    first_order: bool,
    inner_optimizer: str,
    inner_lr: float,
    batch_norm: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One compiled meta-iteration of ``algo`` (a :class:`metaopt.MetaLearner`, which passes its
    settings): accumulate ``weight ×`` its meta-gradient into ``.grad``; return ``MetaMetrics``'
    fields (support losses before and after adaptation, query losses, each ``[B]``).

    The compiled function is kept per learner and per configuration (``steps``,
    ``first_order``, inner optimiser and rate, BatchNorm mode, ``kind``), so changing one of
    them on the learner builds (and compiles) a new one instead of running a stale graph.
    """
    key = (kind, steps, first_order, inner_optimizer, inner_lr, batch_norm)
    engines = _ENGINES.setdefault(algo, {})
    if key not in engines:
        engines[key] = CompiledMetaGradient(
            algo.model,
            algo.rate_parameters(),
            kind=kind,
            steps=steps,
            first_order=first_order,
            inner_optimizer=inner_optimizer,
            inner_lr=inner_lr,
            batch_norm=batch_norm,
        )
    before, query, after = engines[key](tasks, weight)
    return before, after, query


def engine_of(algo: Any) -> list[CompiledMetaGradient]:
    """The compiled meta-iterations ``algo`` has built so far (for compile counts and times)."""
    return list(_ENGINES.get(algo, {}).values())


def compile_seconds(algo: Any) -> float | None:
    """Wall-clock seconds of ``algo``'s first compiled call(s) (tracing, compiling or loading
    from the persistent cache, and the first run), summed over its compiled meta-iterations;
    ``None`` before the first."""
    times = [e.compile_seconds for e in engine_of(algo) if e.compile_seconds is not None]
    return sum(times) if times else None


def compile_record(algo: Any) -> dict[str, Any]:
    """``algo``'s compile as record fields: ``compile_s`` (:func:`compile_seconds`) and
    ``compile_cache`` (``"cold"`` if any of its compiles generated code, else ``"warm"`` if they
    loaded it from inductor's cache, else ``None``; see :class:`CompiledMetaGradient`)."""
    caches = {e.compile_cache for e in engine_of(algo)}
    cache = "cold" if "cold" in caches else "warm" if "warm" in caches else None
    return {"compile_s": compile_seconds(algo), "compile_cache": cache}
