"""Floating-point operations of a meta-iteration, and the machine's float32 matmul peak.

A case that names ``flops_from`` reports achieved FLOP/s: the meta-iteration's operations are
counted once (`count_flops`), divided by each implementation's median time, and set against
the matmul peak (`matmul_peak`), measured in the same run at the same thread count.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

__all__ = ["count_flops", "matmul_peak"]


def _conv_backward_flop(
    grad_out_shape: list[int],
    x_shape: list[int],
    w_shape: list[int],
    _bias: Any,
    _stride: Any,
    _padding: Any,
    _dilation: Any,
    transposed: bool,
    _output_padding: Any,
    _groups: int,
    output_mask: Sequence[bool],
    out_shape: Sequence[Any] | None = None,
    **kwargs: Any,
) -> int:
    """FLOPs of ``aten.convolution_backward``, a grouped convolution counted group by group.

    torch's own formula (2.13) counts the weight gradient of a grouped convolution ``groups`` times
    over (the transposed shapes it builds lose the group division). The
    vectorised engine runs the tasks' convolutions as one grouped convolution (one group per task),
    so its meta-iteration would count about meta-batch times the loop's. Each half of the backward
    (input gradient, weight gradient) costs the multiply-adds of the forward convolution.
    """
    from torch.utils.flop_counter import conv_flop_count

    assert out_shape is not None
    flops = 0
    if output_mask[0]:  # input gradient: the transposed convolution of grad_out with the weight
        flops += conv_flop_count(grad_out_shape, w_shape, list(out_shape[0]), not transposed)
    if output_mask[1]:  # weight gradient: as many multiply-adds as the forward convolution
        flops += conv_flop_count(x_shape, w_shape, grad_out_shape, transposed)
    return flops


def count_flops(fn: Callable[[], Any]) -> int:
    """Floating-point operations of one call of ``fn``, forward and backward passes included.

    Counted by ``torch.utils.flop_counter.FlopCounterMode``: matrix products and convolutions,
    2 per multiply-add (normalisation, activations and other element-wise work are not counted),
    with grouped convolutions' backward counted per group (`_conv_backward_flop`), so that a
    vmapped meta-iteration counts what the task-by-task loop does.
    """
    from torch.utils.flop_counter import FlopCounterMode

    mapping = {torch.ops.aten.convolution_backward: _conv_backward_flop}
    with FlopCounterMode(display=False, custom_mapping=mapping) as counter:
        fn()
    return int(counter.get_total_flops())


def matmul_peak(*, target_s: float = 0.05, repeats: int = 10) -> dict[str, Any]:
    """The machine's float32 matrix-product rate at torch's current thread count.

    ``torch.mm`` of two n×n float32 matrices, n (a multiple of 128 from 256 to 4096) chosen from a
    512×512 probe so that one product takes about ``target_s``; the median of ``repeats`` products
    after a warm-up. Returns a record ``{"case": "matmul-peak", "impl": "torch.mm", "size",
    "flops", "time_s", "flop_per_s"}`` (2·n³ FLOPs per product).
    """
    generator = torch.Generator().manual_seed(0)

    def median_time(n: int, count: int) -> float:
        a = torch.randn(n, n, generator=generator)
        b = torch.randn(n, n, generator=generator)
        out = torch.mm(a, b)  # warm-up, and the output buffer
        samples = []
        for _ in range(count):
            start = time.perf_counter()
            torch.mm(a, b, out=out)
            samples.append(time.perf_counter() - start)
        return statistics.median(samples)

    probe = 512
    rate = 2 * probe**3 / median_time(probe, 3)
    n = min(4096, max(256, 128 * round((target_s * rate / 2) ** (1 / 3) / 128)))
    seconds = median_time(n, repeats)
    return {
        "case": "matmul-peak",
        "impl": "torch.mm",
        "size": n,
        "flops": 2 * n**3,
        "time_s": seconds,
        "flop_per_s": 2 * n**3 / seconds,
    }
