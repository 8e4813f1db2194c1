"""What did and did not make ``images-conv4-5w1s`` faster: channels-last tensors, the vectorised
engine on the whole meta-batch or in chunks of tasks, and its grouped convolutions against the
loop's ordinary ones (docs/performance.md).

Measurements on the bench case's workload (`benchmarks.bench_images`), at one thread:

* the TorchOpt-pattern loop (the bench's reference) with the model and the images in the default
  (NCHW) memory format and in channels-last, and the batched engines (``--engines``) given the
  tasks ``--chunks`` at a time, timed round robin, medians (a compiled row compiles once per
  chunk size first);
* one meta-iteration of the vectorised and of the loop engine under ``torch.profiler``: the self
  time of the convolutions (forward and backward; the vectorised engine runs the tasks' convolutions
  as one grouped convolution) and of everything else.

Run ``python -m benchmarks.images_layouts [--size 28|84] [--meta-batch 32] [--chunks 32,4]
[--engines vmap,compiled] [--repeats 3]`` (28 px: a few minutes, and a compile of a few minutes per
compiled row when inductor has not cached it; 84 px with a chunk of 32 needs many GB).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from torch.profiler import ProfilerActivity, profile

from benchmarks import bench_images
from metaopt.tools.bench import Gradient

CONVOLUTIONS = ("aten::mkldnn_convolution", "aten::convolution_backward", "aten::_convolution")


def _median_ms(impls: dict[str, Callable[[], Gradient]], repeats: int) -> dict[str, float]:
    samples: dict[str, list[float]] = {name: [] for name in impls}
    for fn in impls.values():
        fn()  # warm-up
    for _ in range(repeats):
        for name, fn in impls.items():
            start = time.perf_counter()
            fn()
            samples[name].append(time.perf_counter() - start)
    return {name: 1e3 * statistics.median(s) for name, s in samples.items()}


def _profiled_ms(fn: Callable[[], Gradient]) -> tuple[float, float]:
    """Self time of the convolutions and of everything else in one call, in ms."""
    fn()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    events = prof.key_averages()
    conv = sum(e.self_cpu_time_total for e in events if e.key in CONVOLUTIONS) / 1e3
    total = sum(e.self_cpu_time_total for e in events) / 1e3
    return conv, total - conv


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--size", type=int, choices=[s.pixels for s in bench_images.SIZES], default=28
    )
    parser.add_argument("--meta-batch", type=int, default=32)
    parser.add_argument("--chunks", default="32,4", help="batched engines' tasks per call")
    parser.add_argument("--engines", default="vmap,compiled", help="batched engines to time")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    bench_images.META_BATCH = args.meta_batch
    (size,) = [s for s in bench_images.SIZES if s.pixels == args.size]
    print(f"{args.size}px, meta-batch {args.meta_batch}, 1 thread, torch {torch.__version__}")
    impls = {
        "torchopt-loop (NCHW)": bench_images.torchopt_row(size, False),
        "torchopt-loop (channels-last)": bench_images.torchopt_row(size, False, True),
    }
    for engine in args.engines.split(","):
        for chunk in map(int, args.chunks.split(",")):
            impls[f"metaopt-{engine} ({chunk} tasks a call)"] = bench_images._metaopt(
                size, False, engine, chunk
            )
    times = _median_ms(impls, args.repeats)
    for name, ms in times.items():
        print(f"  {name:32s} {ms:8.0f} ms (median of {args.repeats})")
    for engine in ("vmap", "loop"):
        conv, rest = _profiled_ms(bench_images._metaopt(size, False, engine, None))
        print(
            f"  metaopt-{engine:5s} profiled: convolutions {conv:6.0f} ms, the rest {rest:6.0f} ms"
        )


if __name__ == "__main__":
    main()
