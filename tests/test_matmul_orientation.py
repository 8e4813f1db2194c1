"""The matmul-orientation pass rewrites a product only where the timer says so, to the same values.

The pass runs on aten graphs with fake-tensor metadata, as inductor hands them to it; here they
come from ``make_fx`` (no inductor compile, so the tests are fast). A fake timer decides the
orientation, so every assertion is about the rewrite, none about this machine's speed; the
compiled engine's tests (``test_engine_compiled.py``, the slow grid through inductor) run the pass
with its real timer inside every compile.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch.fx.experimental.proxy_tensor import make_fx

from metaopt.matmul_orientation import MARGIN, MatmulOrientation, product_seconds

aten = torch.ops.aten


def products(graph: torch.fx.Graph) -> list[torch.fx.Node]:
    return [n for n in graph.nodes if n.target in (aten.mm.default, aten.bmm.default)]


def fixed_timer(direct: float, swapped: float) -> Callable[[Callable[[], object]], float]:
    """A timer that reports ``direct`` for the first product of each pair timed, ``swapped``
    for the second (the pass times the direct orientation first)."""
    calls: list[None] = []

    def timer(product: Callable[[], object]) -> float:
        product()  # the product must run on the random operands
        calls.append(None)
        return direct if len(calls) % 2 else swapped

    return timer


def network(x: torch.Tensor, w: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """mm, bmm with an expanded (stride-0) operand, bmm of transposed views."""
    h = torch.tanh(x.reshape(-1, x.shape[-1]) @ w).reshape(*x.shape[:-1], w.shape[-1])
    g = torch.bmm(h, v.expand(x.shape[0], *v.shape))
    return torch.bmm(g.transpose(1, 2), h).sum() + torch.bmm(h.transpose(1, 2), g).pow(2).sum()


def inputs(dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, 7, 3, generator=g, dtype=dtype)
    return (
        x,
        torch.randn(3, 6, generator=g, dtype=dtype),
        torch.randn(6, 2, generator=g, dtype=dtype),
    )


def traced(dtype: torch.dtype = torch.float64) -> torch.fx.GraphModule:
    return make_fx(network, tracing_mode="fake")(*inputs(dtype))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_swapped_products_compute_the_same_values(dtype: torch.dtype) -> None:
    module = traced(dtype)
    count = len(products(module.graph))
    orientation = MatmulOrientation(timer=fixed_timer(direct=2.0, swapped=1.0))
    orientation(module.graph)
    module.recompile()
    assert count == 4 and len(orientation.decisions) == count
    assert all(d.swapped for d in orientation.decisions)
    # each product now multiplies the transposed operands in the other order
    for node in products(module.graph):
        assert all(arg.target is aten.permute.default for arg in node.args)
    want = network(*inputs(dtype))
    torch.testing.assert_close(
        module(*inputs(dtype)), want, rtol=1e-12 if dtype is torch.float64 else 1e-5, atol=0
    )


def test_products_stay_as_traced_unless_the_swap_wins_by_the_margin() -> None:
    for swapped, rewritten in ((1.0 / MARGIN, True), (1.0 / MARGIN + 1e-3, False), (2.0, False)):
        module = traced()
        before = [str(n) for n in module.graph.nodes]
        orientation = MatmulOrientation(timer=fixed_timer(direct=1.0, swapped=swapped))
        orientation(module.graph)
        assert all(d.swapped is rewritten for d in orientation.decisions)
        assert ([str(n) for n in module.graph.nodes] != before) is rewritten


def test_integer_products_are_left_alone() -> None:
    a, b = torch.arange(6).reshape(2, 3), torch.arange(12).reshape(3, 4)
    module = make_fx(torch.mm, tracing_mode="fake")(a, b)
    orientation = MatmulOrientation(timer=fixed_timer(direct=2.0, swapped=1.0))
    orientation(module.graph)
    assert orientation.decisions == [] and len(products(module.graph)) == 1


def test_the_timer_runs_the_product_in_blocks() -> None:
    calls: list[None] = []
    seconds = product_seconds(lambda: calls.append(None))
    assert 0 < seconds < 1e-3
    assert len(calls) > 5  # one warm-up call, then blocks of calls


def test_the_cache_key_names_the_thread_count() -> None:
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = MatmulOrientation().uuid()
        torch.set_num_threads(2)
        two = MatmulOrientation().uuid()
    finally:
        torch.set_num_threads(threads)
    assert one != two and one.endswith("-1-threads")


def test_the_pass_leaves_the_global_random_stream_alone() -> None:
    module = traced()
    torch.manual_seed(5)
    MatmulOrientation(timer=fixed_timer(direct=2.0, swapped=1.0))(module.graph)
    after = torch.rand(3)
    torch.manual_seed(5)
    torch.testing.assert_close(after, torch.rand(3), rtol=0, atol=0)
