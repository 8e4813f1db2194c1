"""Checkpointed unrolling against the plain unroll: peak memory, time and meta-gradient.

Second-order MAML on the bench's sine batch (meta-batch 25, K = 10, MLP 1-40-40-1, inner SGD at
0.01, vectorised engine), ``MAML(..., unroll_checkpoints=N)`` against ``MAML(...)`` at each step
count: the relative difference of the meta-gradients, both peak memories
(:func:`metaopt.tools.bench.peak_memory_bytes`, after a warm-up) and the median time of one
meta-iteration, the two timed round-robin in one process::

    python -m benchmarks.unroll_memory --steps 1,5,10,20 --checkpoints 5 --repeats 21
"""

from __future__ import annotations

import argparse
import os
import statistics

import torch

from benchmarks.bench_sine import SineBatch, sine_mlp
from metaopt.algorithms import MAML
from metaopt.tools.bench import peak_memory_bytes, round_robin
from metaopt.unroll import schedule_cost


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", default="1,5,10,20", help="inner-step counts, comma-separated")
    parser.add_argument("--checkpoints", type=int, default=5, help="unroll_checkpoints")
    parser.add_argument("--repeats", type=int, default=21)
    parser.add_argument("--tasks", type=int, default=25)
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    args = parser.parse_args()
    torch.set_num_threads(1)
    dtype = getattr(torch, args.dtype)
    batch = SineBatch(args.tasks, 10)
    for name in ("xs", "ys", "xq", "yq"):
        setattr(batch, name, getattr(batch, name).to(dtype))
    print(f"torch {torch.__version__}, 1 thread, load average {os.getloadavg()[0]:.2f}")
    print("steps  plain MiB  ckpt MiB  plain ms  ckpt ms  time ×  no-graph steps  rel. diff")
    for steps in (int(k) for k in args.steps.split(",")):
        runs = {}
        for label, checkpoints in (("plain", None), ("ckpt", args.checkpoints)):
            algo = MAML(sine_mlp().to(dtype), 0.01, steps, unroll_checkpoints=checkpoints)

            def run(algo: MAML = algo) -> torch.Tensor:
                algo.model.zero_grad()
                algo.meta_backward(batch)
                return torch.cat([p.grad.flatten() for p in algo.model.parameters()])

            runs[label] = run
        plain, checkpointed = runs["plain"](), runs["ckpt"]()
        difference = float((checkpointed - plain).norm() / plain.norm())
        peaks = {label: peak_memory_bytes(run) / 2**20 for label, run in runs.items()}
        times = round_robin(runs, args.repeats)
        median = {label: statistics.median(t) * 1e3 for label, t in times.items()}
        print(
            f"{steps:5d} {peaks['plain']:10.2f} {peaks['ckpt']:9.2f} {median['plain']:9.2f}"
            f" {median['ckpt']:8.2f} {median['ckpt'] / median['plain']:7.2f}"
            f" {schedule_cost(steps, args.checkpoints):15d} {difference:10.1e}"
        )
    print(f"load average {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
