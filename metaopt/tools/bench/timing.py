"""Agreement, then timing: every implementation of a case must compute the same meta-gradient
before any of them is timed; the timing is round-robin over the implementations after a warm-up,
each sample a block of back-to-back calls, so that machine noise falls on all of them alike, and
reports medians."""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Mapping
from typing import Any

from metaopt.tools.bench.cases import Case, Gradient
from metaopt.tools.bench.flops import count_flops

__all__ = ["MAX_CALLS", "relative_difference", "round_robin", "time_case"]


def relative_difference(a: Gradient, b: Gradient) -> float:
    """‖a − b‖ / ‖b‖ over all tensors together (‖a − b‖ where b is zero)."""
    num = math.sqrt(sum(float(((x - y) ** 2).sum()) for x, y in zip(a, b, strict=True)))
    den = math.sqrt(sum(float((y**2).sum()) for y in b))
    return num / den if den else num


def round_robin(
    impls: Mapping[str, Callable[[], object]],
    repeats: int,
    inner: int | Mapping[str, int] = 1,
    *,
    untimed: int = 0,
) -> dict[str, list[float]]:
    """Seconds per call of each implementation, ``repeats`` samples each (a sample is the mean of
    ``inner`` back-to-back calls, or of ``inner[name]``, after ``untimed`` calls that refill the
    caches the previous implementation evicted), taken in turn so that machine noise falls on
    every implementation alike."""
    samples: dict[str, list[float]] = {name: [] for name in impls}
    calls = inner if isinstance(inner, Mapping) else dict.fromkeys(impls, inner)
    for _ in range(repeats):
        for name, fn in impls.items():
            count = calls[name]
            for _ in range(untimed):
                fn()
            start = time.perf_counter()
            for _ in range(count):
                fn()
            samples[name].append((time.perf_counter() - start) / count)
    return samples


#: Most back-to-back calls in one sample, however fast the implementation.
MAX_CALLS = 100


def time_case(
    case: Case, *, repeats: int, warmup: int, inner: int = 1, min_sample_s: float = 0.0
) -> dict[str, dict[str, Any]]:
    """Check agreement, then time each implementation; return name -> record fields.

    Each sample is a block of back-to-back calls of one implementation: ``inner`` calls, or more
    where one call is shorter than ``min_sample_s`` (as many as make the block that long, by the
    fastest warm-up call, at most `MAX_CALLS`), so that the first call of a block, which
    refills the caches another implementation's block evicted, weighs on a fast implementation
    no more than on a slow one. ``calls_per_sample`` records the count.
    """
    results = {name: fn() for name, fn in case.impls.items()}
    reference = results[case.reference]
    records: dict[str, dict[str, Any]] = {}
    for name, gradient in results.items():
        if name in case.stochastic:
            records[name] = {"max_rel_grad_diff": None}
            continue
        difference = relative_difference(gradient, reference)
        records[name] = {"max_rel_grad_diff": difference}
        if not difference <= case.tolerance:
            raise AssertionError(
                f"{case.name}: {name}'s meta-gradient differs from {case.reference}'s by "
                f"{difference:.3g} (relative), more than {case.tolerance:g}; timings not reported"
            )
    if case.flops_from is not None:
        flops = count_flops(case.impls[case.flops_from])
        for fields in records.values():
            fields["flops"] = flops
    fastest = {name: math.inf for name in case.impls}
    for _ in range(max(warmup, 1 if min_sample_s > 0 else 0)):
        for name, fn in case.impls.items():
            start = time.perf_counter()
            fn()
            fastest[name] = min(fastest[name], time.perf_counter() - start)
    calls = {
        name: max(inner, min(MAX_CALLS, math.ceil(min_sample_s / seconds)))
        if min_sample_s > 0 and seconds > 0
        else inner
        for name, seconds in fastest.items()
    }
    samples = round_robin(case.impls, repeats, calls)
    for name in case.impls:
        records[name]["median_s"] = statistics.median(samples[name])
        records[name]["calls_per_sample"] = calls[name]
    return records
