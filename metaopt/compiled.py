"""The compiled engine: one ``torch.compile``d function from θ and a meta-batch to the meta-gradient.

The vectorised engine (`metaopt.engine`) runs each meta-iteration as a few hundred small
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

The compiled function multiplies the sums by the task weight, an input tensor, so a change of
``scale`` never recompiles, and `CompiledMetaGradient.__call__` hands them to ``.grad``
(one ``foreach`` addition where a gradient is already there). The support losses at θ come out
of the same function, and so do the query losses where the meta-gradient needs them (MAML,
Meta-SGD). The metrics it does not need, the
support losses at the adapted parameters (``support_after``) and Reptile's query losses, are
forward passes over the whole support and query sets, as costly as Reptile's five inner steps on
minibatches: the function returns the adapted parameters instead, and a second compiled function
(`functional_metrics`) computes those metrics from them when [`MetaMetrics`][metaopt.MetaMetrics]
is first read, as the eager engines defer ``support_after``. The training loop reads them every
iteration (it logs them and checks them for NaN/inf), so it runs both graphs; the bench, which
reads only the meta-gradient, runs one. The inner SGD step is written on tuples
(`metaopt.inner.plain_sgd`) rather than TorchOpt's ``optree`` mapping, whose registry and
closures dynamo would otherwise guard on every call.

**What recompiles.** The function is compiled with static shapes (``dynamic=False``) and
``torch.compile``'s guards decide when to compile again: a different number of tasks, support,
query or parameter shape, dtype or device; a different type of meta-batch, or a change of a
Python value the batch's losses read (e.g. ``TaskBatch.minibatch``); the model's modules
switching train/eval mode. A training run sees one shape for every meta-iteration and compiles
once; evaluation on a meta-batch of another size compiles once more. Every compile after the
first is counted (`CompiledMetaGradient.compiles`, ``metric_compiles``) and warned about
once, since a run whose shapes change every iteration would compile every iteration and should
use ``vmap``. Reassigning a module-level name of torch's or metaopt's own code after the first
call does not recompile: the engine leaves dynamo's guards on those out
(`library_guards_dropped`).
"""

from __future__ import annotations

import re
import time
import types
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from metaopt.engine import _Layout, batch_norm_mode, check_losses
from metaopt.functional import (
    MetaGradientResult,
    MetricsResult,
    Tensors,
    functional_meta_gradient,
    functional_metrics,
)
from metaopt.matmul_orientation import Decision, MatmulOrientation
from metaopt.rules.base import Rule
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
    "functional_metrics",
]


def compile_options() -> dict[str, Any]:
    """``torch.compile`` keyword arguments of the engine: inductor, static shapes, and under
    ``"inductor_config"`` the inductor settings its code is generated with: ``cpp_wrapper`` (the
    generated kernels are called from C++ rather than from a Python wrapper, which took 13 to
    20 % off the bench's compiled sine meta-iterations) and, as ``post_grad_custom_post_pass``,
    a `MatmulOrientation` (each CPU matrix product in its
    faster orientation); under ``"options"``, dynamo's ``guard_filter_fn``
    (`library_guards_dropped`); see docs/performance.md."""
    return {
        "backend": "inductor",
        "dynamic": False,
        "fullgraph": True,
        "options": {"guard_filter_fn": library_guards_dropped},
        "inductor_config": {
            "cpp_wrapper": True,
            "post_grad_custom_post_pass": MatmulOrientation(),
        },
    }


#: Dynamo's names for the module-level names of torch's and metaopt's own modules (``torch``,
#: ``__import_torch_dot_nn_dot_functional``, ``__import_metaopt_dot_engine``) and for Python's
#: builtins (``__builtins_dict___0``), as global guards spell them.
_LIBRARY_GLOBALS = re.compile(
    r"G\['(torch'\]|__import_(torch|metaopt)('\]|_dot_)|__builtins_dict___\d+'\])"
)


def library_guards_dropped(guards: Sequence[Any]) -> list[bool]:
    """Dynamo's ``guard_filter_fn`` for the engine: every guard kept but those on the module-level
    names of torch's and metaopt's own code and on Python's builtins.

    Those guards check, on every call, that ``torch.func.grad``, ``F.linear``, ``len`` and the
    like are still the objects the graph was traced with: a few hundred checks, 20 to 35 µs of a
    0.5 ms compiled sine meta-iteration (``python -m benchmarks.compiled_overhead``). A run does not
    reassign them, so the engine skips them; the guards on everything a user brings stay: the
    model's modules and their attributes, the meta-batch, the tensors' shapes, dtypes and
    devices, and the globals of the user's own modules that the model or the losses read."""
    return [not (guard.is_global and _LIBRARY_GLOBALS.match(guard.name)) for guard in guards]


class _Compiled:
    """One pure function ``torch.compile``d on first use: its compiles counted (a recompile
    warned about once), its first call timed, inductor's cache use recorded."""

    def __init__(self, function: Callable[..., Any], options: dict[str, Any], what: str) -> None:
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
        self.what = what
        self.compiles = 0
        self._backend_calls = 0
        self.seconds: float | None = None
        self.cache: str | None = None
        self._warned = False
        options = dict(options)
        self._inner_backend = options.pop("backend")
        self.inductor_config = options.pop("inductor_config", {})
        if "options" in options:  # torch.compile pops guard_filter_fn out of it: a copy each
            options["options"] = dict(options["options"])
        self._compiled = torch.compile(function, backend=self._backend, **options)

    def _backend(self, graph: torch.fx.GraphModule, example_inputs: list[Any]) -> Any:
        """Inductor (or the chosen backend); its calls tell `__call__` that dynamo compiled."""
        self._backend_calls += 1
        backend = torch._dynamo.lookup_backend(self._inner_backend)
        if self._inner_backend != "inductor":
            return backend(graph, example_inputs)
        with torch._inductor.config.patch(self.inductor_config):
            return backend(graph, example_inputs)

    def __call__(self, *args: Any) -> Any:
        start = time.perf_counter()
        first = self.seconds is None
        cache = _fx_graph_cache() if first else (0, 0)
        calls = self._backend_calls
        try:
            result = self._compiled(*args)
        except torch._dynamo.exc.Unsupported as error:
            # e.g. sampling with an explicit torch.Generator (the RL tasks): not traceable
            reason = str(error).strip().splitlines()[0]
            raise TypeError(
                f"engine='compiled' cannot trace this meta-batch's losses ({reason}); "
                "use engine='vmap'"
            ) from error
        if self._backend_calls != calls:
            self._compiled_once_more()
        if first:
            self.seconds = time.perf_counter() - start
            hits, misses = (now - then for now, then in zip(_fx_graph_cache(), cache, strict=True))
            self.cache = "cold" if misses else "warm" if hits else None
        return result

    def _compiled_once_more(self) -> None:
        """Count one compile (and warn at the second): a call in which the backend ran.

        A call compiles one graph (``fullgraph=True``), but dynamo may call the backend more
        than once for it: when the backend's analysis asks for a restart (AOTAutograd's pass
        that turns Python float scalars into tensors does, on a float64 second-order
        meta-iteration with an empty inductor cache), dynamo traces the frame again and calls the
        backend again. Counting backend calls would count that one compile twice."""
        self.compiles += 1
        if self.compiles > 1 and not self._warned:
            self._warned = True
            warnings.warn(
                f"the compiled engine compiled its {self.what} again: the meta-batch's shapes, "
                "dtype or Python values (or the model's train/eval mode) changed. A run that "
                "changes them every iteration pays a compile each time; use engine='vmap' there",
                UserWarning,
                stacklevel=3,
            )


class CompiledMetaGradient:
    """A meta-learner's compiled meta-iteration, compiled on first use and reused after.

    Call it with the meta-batch and the task weight: it accumulates ``weight ×`` the
    meta-gradient into ``.grad`` of θ (and Meta-SGD's rates) and returns the per-task support
    losses before adaptation, query losses and support losses after adaptation. The metrics the
    meta-gradient does not need (the support losses after adaptation; Reptile's query losses
    too) come back as functions that compute them, on first access through
    [`MetaMetrics`][metaopt.MetaMetrics], in a second compiled function of the adapted parameters.

    Attributes:
        compiles: Graphs of the meta-gradient compiled so far (1 after the first call; more
            means recompiles).
        metric_compiles: The same for the metrics' graph (0 until a deferred metric is read).
        compile_seconds: Wall-clock time of the first call (tracing and compiling included), plus
            that of the first metrics call once there has been one.
        compile_cache: Where inductor's code for the first calls came from: ``"cold"`` (it
            generated some), ``"warm"`` (all of it loaded from the persistent FX-graph cache),
            ``None`` before the first call or with a backend that has no such cache (``eager``).
    """

    def __init__(
        self,
        model: nn.Module,
        rule: Rule,
        learned: Sequence[torch.Tensor],
        *,
        steps: int,
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
        self._learned = list(learned)
        function = functional_meta_gradient(
            model,
            rule,
            steps=steps,
            inner_optimizer=inner_optimizer,
            inner_lr=inner_lr,
            learned=bool(self._learned),
            batch_norm=batch_norm,
        )
        query = rule.outer != "query-gradient"  # the metrics' graph computes the query losses
        metrics = functional_metrics(model, query=query, batch_norm=batch_norm)
        options = {**compile_options(), **(options or {})}
        self._gradient = _Compiled(function, options, "meta-iteration")
        self._scale: tuple[tuple[float, torch.dtype, torch.device], torch.Tensor] | None = None
        #: The rule's `Rule.check` of its learned state at the last call (0-d, or ``None``).
        self.diagnostic: torch.Tensor | None = None
        self._metrics = _Compiled(metrics, options, "metrics")

    def _weight(self, weight: float, like: torch.Tensor | None) -> torch.Tensor | None:
        """``weight`` as the 0-d tensor the compiled function takes, made again only when it
        changes (a run passes the same weight every iteration)."""
        if like is None:
            return None
        key = (weight, like.dtype, like.device)
        if self._scale is None or self._scale[0] != key:
            self._scale = (key, torch.tensor(weight, dtype=like.dtype, device=like.device))
        return self._scale[1]

    @property
    def compiles(self) -> int:
        return self._gradient.compiles

    @property
    def metric_compiles(self) -> int:
        return self._metrics.compiles

    @property
    def compile_seconds(self) -> float | None:
        times = [c.seconds for c in (self._gradient, self._metrics) if c.seconds is not None]
        return sum(times) if times else None

    @property
    def compile_cache(self) -> str | None:
        caches = {self._gradient.cache, self._metrics.cache}
        return "cold" if "cold" in caches else "warm" if "warm" in caches else None

    @property
    def matmul_decisions(self) -> list[Decision]:
        """The matrix products `MatmulOrientation` timed
        while compiling this engine's graphs (empty on a warm start, or without the pass)."""
        # both graphs compile with the engine's one inductor_config, hence one pass
        orientation = self._gradient.inductor_config.get("post_grad_custom_post_pass")
        return list(orientation.decisions) if isinstance(orientation, MatmulOrientation) else []

    def __call__(
        self, tasks: BatchedTasks, weight: float
    ) -> tuple[torch.Tensor, torch.Tensor | Callable[[], torch.Tensor], Callable[[], torch.Tensor]]:
        theta = tuple(p.detach() for p in self._theta)
        rates = tuple(r.detach() for r in self._learned)
        shared = {n: t.detach() for n, t in self._layout.shared.items()}
        scale = self._weight(weight, theta[0] if theta else None)
        with batch_norm_mode(self.model, self.batch_norm):
            result = self._gradient(theta, rates, shared, tasks, scale)
        sums, before, query, adapted, self.diagnostic = result
        num_tasks = len(tasks)
        before = check_losses(before, num_tasks, "support_losses")
        if query is not None:
            query = check_losses(query, num_tasks, "query_losses")
        _accumulate(self._theta + self._learned, sums)
        deferred: list[MetricsResult] = []

        def metric(index: int) -> Callable[[], torch.Tensor]:
            def compute() -> torch.Tensor:
                if not deferred:  # one call computes both, whichever is read first
                    # under no_grad whatever the reader's mode: dynamo guards on it
                    with batch_norm_mode(self.model, self.batch_norm), torch.no_grad():
                        deferred.append(self._metrics(adapted, shared, tasks))
                name = "query_losses" if index == 0 else "support_losses"
                return check_losses(deferred[0][index], num_tasks, name)

            return compute

        return before, metric(0) if query is None else query, metric(1)


def _accumulate(targets: Sequence[torch.Tensor], directions: Tensors) -> None:
    """``.grad += direction`` for each target, a direction itself where ``.grad`` is ``None``
    (the directions are outputs of the compiled function, which nothing else holds); the
    additions are one ``foreach`` operation, cheaper than one eager addition per tensor."""
    # The compiled function may return one buffer for two equal directions (two parameters
    # with the same gradient expression): each .grad gets its own, or an in-place step on one
    # (clip_grad_norm_) would change the other.
    starts: set[int] = set()
    owned = []
    for direction in directions:
        start = direction.data_ptr()
        owned.append(direction.clone() if start in starts else direction)
        starts.add(start)
    directions = tuple(owned)
    present = [i for i, p in enumerate(targets) if p.grad is not None]
    if present:
        grads: list[torch.Tensor] = [targets[i].grad for i in present]  # type: ignore[misc]
        sums = torch._foreach_add(grads, [directions[i] for i in present])
        for i, total in zip(present, sums, strict=True):
            targets[i].grad = total
    for p, direction in zip(targets, directions, strict=True):
        if p.grad is None:
            p.grad = direction


def _fx_graph_cache() -> tuple[int, int]:
    """Inductor's FX-graph cache hits and misses so far in this process."""
    counts = torch._dynamo.utils.counters["inductor"]
    return counts["fxgraph_cache_hit"], counts["fxgraph_cache_miss"]


def compiled_meta_backward(
    cache: dict[tuple[Any, ...], CompiledMetaGradient],
    model: nn.Module,
    rule: Rule,
    learned: Sequence[torch.Tensor],
    tasks: BatchedTasks,
    weight: float,
    *,
    steps: int,
    inner_optimizer: str,
    inner_lr: float,
    batch_norm: str,
) -> tuple[CompiledMetaGradient, tuple[torch.Tensor, Any, Any]]:
    """One compiled meta-iteration of ``rule`` on ``model``: accumulate ``weight ×`` its
    meta-gradient into ``.grad``; return the engine that ran it and ``MetaMetrics``' fields
    (support losses before and after adaptation, query losses, each ``[B]``; those the
    meta-gradient does not need as functions that compute them, see `CompiledMetaGradient`).

    The compiled functions live in ``cache`` (the learner's own), one per configuration (the
    rule, ``steps``, inner optimiser and rate, BatchNorm mode) and per state of the model's
    structure (`_structure`), so changing one of them builds (and compiles) a new one instead of
    running a stale graph: a parameter frozen or unfrozen, a tensor replaced (``model.to(...)``
    replaces buffers), a module switched between training and evaluation.
    """
    key = (
        id(rule),  # a learner replaces its rule rather than change it; the engine keeps it alive
        steps,
        inner_optimizer,
        inner_lr,
        batch_norm,
        _structure(model, learned),
    )
    if key not in cache:
        cache[key] = CompiledMetaGradient(
            model,
            rule,
            learned,
            steps=steps,
            inner_optimizer=inner_optimizer,
            inner_lr=inner_lr,
            batch_norm=batch_norm,
        )
    engine = cache[key]
    before, query, after = engine(tasks, weight)
    return engine, (before, after, query)


def _structure(model: nn.Module, rates: Sequence[torch.Tensor]) -> tuple[Any, ...]:
    """What an engine fixes when it is built (its layout of θ, the frozen tensors and the buffers,
    its refusals): the rates' identities, then, module by module, its identity and training flag,
    each parameter's identity and ``requires_grad``, each buffer's identity. Dynamo's guards see
    none of it, since the compiled function receives detached tensors. (One flat tuple: every
    entry is an object's identity or a flag, so the sequence alone tells two states apart.)"""
    signature: list[Any] = [id(rate) for rate in rates]
    add = signature.append
    for module in model.modules():
        add(id(module))
        add(module.training)
        for p in module._parameters.values():
            add(id(p))
            add(p is not None and p.requires_grad)
        for buffer in module._buffers.values():
            add(id(buffer))
    return tuple(signature)


def engine_of(algo: Any) -> list[CompiledMetaGradient]:
    """The compiled meta-iterations ``algo`` (a [`MetaLearner`][metaopt.MetaLearner]) has built so
    far, from its own cache (for compile counts and times)."""
    return list(getattr(algo, "compiled_cache", {}).values())


def compile_seconds(algo: Any) -> float | None:
    """Wall-clock seconds of ``algo``'s first compiled call(s) (tracing, compiling or loading
    from the persistent cache, and the first run), summed over its compiled meta-iterations;
    ``None`` before the first."""
    times = [e.compile_seconds for e in engine_of(algo) if e.compile_seconds is not None]
    return sum(times) if times else None


def compile_record(algo: Any) -> dict[str, Any]:
    """``algo``'s compile as record fields: ``compile_s`` (`compile_seconds`) and
    ``compile_cache`` (``"cold"`` if any of its compiles generated code, else ``"warm"`` if they
    loaded it from inductor's cache, else ``None``; see `CompiledMetaGradient`)."""
    caches = {e.compile_cache for e in engine_of(algo)}
    cache = "cold" if "cold" in caches else "warm" if "warm" in caches else None
    return {"compile_s": compile_seconds(algo), "compile_cache": cache}
