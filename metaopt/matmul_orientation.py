"""An inductor graph pass that computes each CPU matrix product in its faster orientation.

A product ``C = A @ B`` (``mm``, or ``bmm`` per task) can as well be computed as
``C = (Bᵀ @ Aᵀ)ᵀ``: the same multiplications and sums, with the operands swapped and every
transpose a free view of the same memory. On this project's CPU build (MKL, one thread) the two
orientations of the same product can differ several-fold. In the compiled sine meta-iteration,
``[25, 40, 40] @ [25, 40, 10]`` took 43 to 119 µs depending on its operands' strides, its
transpose ``[25, 10, 40] @ [25, 40, 40]`` 16 µs (``python -m benchmarks.matmul_orientation``); inductor
calls MKL with the orientation the traced graph happens to have, and the second-order backward
has several such products with the 10 shots as the narrow dimension.

`MatmulOrientation` is a ``post_grad_custom_post_pass``: for each ``mm`` and ``bmm`` on
the CPU in the graph inductor is about to compile, it times both orientations on random tensors
of the operands' shapes, strides and dtype (at least 2 ms per product, once per compile) and
rewrites the node to the swapped form when that is at least `MARGIN` times faster, so
that timing noise never flips a product whose orientations are close. The rewrite changes no
value, only the order MKL accumulates in (the bench's compiled sine meta-gradients agree with
``torch.func``'s to the same 1.2e-7 to 1.9e-7 with it as without). Products on other devices are
left as traced.

Inductor's persistent cache keys the compiled graph on `MatmulOrientation.uuid`, this
file's hash and the thread count, so a graph compiled under one thread count is not reused
under another; a warm start reuses the orientations chosen when the graph was first compiled.
A cold one times again, and a product whose orientations are within noise of the margin may be
decided the other way: the same values, rounded differently (docs/reliability.md lists this
among what bit-identical reruns need).
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch._dispatch.python import no_python_dispatcher
from torch._inductor.custom_graph_pass import CustomGraphPass, get_hash_for_files

__all__ = ["MARGIN", "Decision", "MatmulOrientation", "product_seconds"]

aten = torch.ops.aten
#: How much faster the swapped orientation must be for the pass to use it.
MARGIN = 1.25
#: Timed blocks per orientation, and the least duration of one (seconds).
REPEATS = 5
BLOCK_SECONDS = 2e-4


@dataclass(frozen=True)
class Decision:
    """One product the pass timed: its operands' shapes, the two orientations' times."""

    target: str
    shapes: tuple[tuple[int, ...], tuple[int, ...]]
    direct_seconds: float
    swapped_seconds: float

    @property
    def swapped(self) -> bool:
        return self.swapped_seconds * MARGIN <= self.direct_seconds


def product_seconds(product: Callable[[], Any]) -> float:
    """Fastest of `REPEATS` blocks of back-to-back calls, per call (after one warm-up).

    Timed outside the compiler's dispatch state (inductor compiles with torch's Python
    dispatcher on, which slows every eager call alike and hides the differences) and without
    autograd, as the compiled graph calls the product."""
    with no_python_dispatcher(), torch.no_grad():
        return _fastest(product)


def _fastest(product: Callable[[], Any]) -> float:
    start = time.perf_counter()
    product()
    once = time.perf_counter() - start
    calls = max(1, min(100, math.ceil(BLOCK_SECONDS / max(once, 1e-9))))
    best = math.inf
    for _ in range(REPEATS):
        start = time.perf_counter()
        for _ in range(calls):
            product()
        best = min(best, (time.perf_counter() - start) / calls)
    return best


def _operand(value: Any) -> torch.Tensor | None:
    """A random tensor with the size, strides, dtype and device of a traced operand (``None``
    unless it is a floating CPU tensor of static shape)."""
    if not isinstance(value, torch.Tensor) or value.device.type != "cpu":
        return None
    if not value.is_floating_point():
        return None
    if not all(isinstance(n, int) for n in (*value.shape, *value.stride())):
        return None
    # one random storage the strides address (an expanded operand's stride 0 reads it again),
    # from a generator of its own: compiling must not move the user's random stream
    extent = 1 + sum((n - 1) * step for n, step in zip(value.shape, value.stride(), strict=True))
    generator = torch.Generator().manual_seed(0)
    storage = torch.randn(extent if value.numel() else 0, dtype=value.dtype, generator=generator)
    return storage.as_strided(value.shape, value.stride())


def _flip(product: Any) -> list[int]:
    """The permutation that transposes the last two dimensions of ``product``'s operands."""
    return [0, 2, 1] if product is aten.bmm.default else [1, 0]


def _call(graph: torch.fx.Graph, target: Any, *args: Any) -> torch.fx.Node:
    """A new node ``target(*args)`` with its fake value (``meta["val"]``), computed from its
    arguments' as inductor's passes would: a later product in the same pass reads its strides."""
    node = graph.call_function(target, args)
    values = [arg.meta["val"] if isinstance(arg, torch.fx.Node) else arg for arg in args]
    node.meta["val"] = target(*values)
    return node


class MatmulOrientation(CustomGraphPass):
    """Inductor post-grad pass: each CPU ``mm``/``bmm`` in its faster orientation (module doc).

    Attributes:
        decisions: Every product timed by this instance, in graph order, across the graphs it
            has run on (empty after a warm start, which loads the compiled graph instead).
        timer: How a product is timed (`product_seconds`; tests substitute their own).
    """

    def __init__(self, timer: Callable[[Callable[[], Any]], float] = product_seconds) -> None:
        self.decisions: list[Decision] = []
        self.timer = timer

    def __call__(self, graph: torch.fx.Graph) -> None:
        for node in list(graph.nodes):
            if node.op != "call_function" or node.target not in (aten.mm.default, aten.bmm.default):
                continue
            decision = self._decide(node)
            if decision is None or not decision.swapped:
                continue
            # the transpose of the last two dimensions, a view: swap its operands' order
            flip = _flip(node.target)
            first, second = node.args
            with graph.inserting_before(node):
                swapped = _call(
                    graph,
                    node.target,
                    _call(graph, aten.permute.default, second, flip),
                    _call(graph, aten.permute.default, first, flip),
                )
                result = _call(graph, aten.permute.default, swapped, flip)
            node.replace_all_uses_with(result)
            graph.erase_node(node)

    def _decide(self, node: torch.fx.Node) -> Decision | None:
        """Both orientations of ``node``'s product timed on random operands like its own
        (``None``, and nothing timed, unless both are floating CPU tensors of static shape)."""
        a, b = (
            _operand(arg.meta.get("val")) if isinstance(arg, torch.fx.Node) else None
            for arg in node.args
        )
        if a is None or b is None:
            return None
        product: Any = node.target  # aten.mm or aten.bmm (checked by the caller)
        flip = _flip(product)
        decision = Decision(
            str(product),
            (tuple(a.shape), tuple(b.shape)),
            self.timer(functools.partial(product, a, b)),
            self.timer(functools.partial(product, b.permute(flip), a.permute(flip))),
        )
        self.decisions.append(decision)
        return decision

    def uuid(self) -> str:
        """The key of inductor's cache: this file's hash and the thread count (the timings,
        hence the orientations chosen, depend on both)."""
        return f"{get_hash_for_files((__file__,)).hex()}-{torch.get_num_threads()}-threads"
