"""The ceiling of the ``images-conv4-5w1s`` bench case: how fast any engine built of PyTorch's
CPU kernels could run its meta-iteration, against the TorchOpt loop.

Every engine computes, per task, a support forward, its gradient with ``create_graph``, a query
forward at the adapted weights and the backward through all of it; the tasks' weights differ
after the inner step, so no engine can do better than the same work with the weights shared,
which lets PyTorch run each layer once on many tasks' images stacked into one batch: the kernels'
best case at that arithmetic. This script times exactly that, one inner step of second-order
MAML on ``c`` tasks' images at once with one set of weights (the same FLOPs per image as the
case; BatchNorm's statistics are over the stacked batch, which changes no FLOP count), for
``c`` = 1, 4, 8, 16 and 32, against the case's ``torchopt-loop`` row on the same meta-batch,
alternating, median of ``--repeats``, one thread. If the fastest ``c`` is below 1.5× the loop,
the case's target (metaopt's fastest engine ≥ 1.5× the TorchOpt loop) is out of reach of any
engine made of these kernels.

Run: ``python -m benchmarks.images_ceiling --sizes 28`` and ``python -m benchmarks.images_ceiling
--sizes 84 --stacks 1 2 4 8`` (16 and more tasks stacked at 84×84 need more than 24 GiB).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from torch.func import functional_call

from benchmarks.bench_images import SIZES, Size, meta_batch, network, torchopt_row

STACKS = (1, 4, 8, 16, 32)


def _shared(size: Size, stack: int) -> Callable[[], None]:
    """One MAML step on ``stack`` tasks' images at once, one set of weights, for the whole
    meta-batch (``32 / stack`` calls)."""
    batch, model = meta_batch(size, False), network(size, False)
    params = dict(model.named_parameters())
    buffers = dict(model.named_buffers())
    tasks = batch.num_tasks

    def stacked(x: torch.Tensor, i: int) -> torch.Tensor:
        return x[i : i + stack].flatten(0, 1)

    def run() -> None:
        for p in params.values():
            p.grad = None
        for i in range(0, tasks, stack):
            state = {**params, **buffers}
            support = functional_call(model, state, (stacked(batch.support_x, i),))
            loss = torch.nn.functional.cross_entropy(support, stacked(batch.support_y, i))
            grads = torch.autograd.grad(loss, list(params.values()), create_graph=True)
            adapted = {
                n: p - size.inner_lr * g for (n, p), g in zip(params.items(), grads, strict=True)
            }
            query = functional_call(model, {**adapted, **buffers}, (stacked(batch.query_x, i),))
            loss = torch.nn.functional.cross_entropy(query, stacked(batch.query_y, i))
            (loss * (stack / tasks)).backward()

    return run


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[s.pixels for s in SIZES])
    parser.add_argument("--stacks", type=int, nargs="+", default=list(STACKS))
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    for size in (s for s in SIZES if s.pixels in args.sizes):
        loop = torchopt_row(size, False)
        timed: dict[str, Callable[[], object]] = {"torchopt-loop": loop}
        timed.update(
            {f"shared weights, {c} task(s) stacked": _shared(size, c) for c in args.stacks}
        )
        for run in timed.values():  # warm-up
            run()
        samples: dict[str, list[float]] = {name: [] for name in timed}
        for _ in range(args.repeats):
            for name, run in timed.items():
                start = time.perf_counter()
                run()
                samples[name].append(time.perf_counter() - start)
        base = statistics.median(samples["torchopt-loop"])
        print(f"{size.pixels}px, one meta-batch of 32 tasks, 1 thread, median of {args.repeats}:")
        for name, values in samples.items():
            median = statistics.median(values)
            print(f"  {name:34s} {median:7.3f} s   {base / median:5.2f}× the TorchOpt loop")


if __name__ == "__main__":
    main()
