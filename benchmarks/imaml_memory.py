"""iMAML's memory does not grow with the inner steps; second-order MAML's does (docs/algorithms.md).

Peak bytes of one meta-iteration (after a warm-up), from torch's profiler
(:func:`metaopt.tools.bench.peak_memory_bytes`), on the vectorised engine: 8 regression tasks of
64 points, MLP 3-256-256-1 (tanh), float32::

    python -m benchmarks.imaml_memory --steps 5,20,80
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

import metaopt
from metaopt.tools.bench import peak_memory_bytes


class Batch(list):
    """Tasks y = sin(x·w), stacked for the vectorised engine."""

    def __init__(self, num_tasks: int, points: int) -> None:
        g = torch.Generator().manual_seed(0)
        x = torch.randn(num_tasks, 2, points, 3, generator=g)
        y = torch.sin(x @ torch.randn(num_tasks, 1, 3, 1, generator=g))
        self.xs, self.ys, self.xq, self.yq = x[:, 0], y[:, 0], x[:, 1], y[:, 1]
        self[:] = range(num_tasks)

    def support_losses(self, forward, step):
        return ((forward(self.xs) - self.ys) ** 2).mean(dim=(1, 2))

    def query_losses(self, forward):
        return ((forward(self.xq) - self.yq) ** 2).mean(dim=(1, 2))


def model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(3, 256), nn.Tanh(), nn.Linear(256, 256), nn.Tanh(), nn.Linear(256, 1)
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", default="5,20,80", help="inner-step counts, comma-separated")
    args = parser.parse_args()
    torch.set_num_threads(1)
    tasks = Batch(8, 64)
    print("inner steps | maml (MiB) | imaml (MiB)")
    for k in (int(s) for s in args.steps.split(",")):
        peaks = []
        for algo in (
            metaopt.MAML(model(), inner_lr=0.01, inner_steps=k, engine="vmap"),
            metaopt.IMAML(
                model(),
                inner_lr=0.01,
                inner_steps=k,
                reg=10.0,
                cg_steps=10,
                cg_tol=0.5,
                engine="vmap",
            ),
        ):
            algo.meta_backward(tasks)  # warm-up: one-off allocations are not the iteration's
            peaks.append(peak_memory_bytes(lambda a=algo: a.meta_backward(tasks)) / 2**20)
        print(f"{k:11d} | {peaks[0]:10.1f} | {peaks[1]:11.1f}")


if __name__ == "__main__":
    main()
