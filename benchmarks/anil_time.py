"""Time one meta-iteration of two trained runs in the same process, round-robin (docs/results.md).

    OMP_NUM_THREADS=1 python -m benchmarks.anil_time RUN_A RUN_B --repeats 50

Loads both runs (``load_run``), draws one meta-batch of the first run's family and config, then
times ``zero_grad`` + ``meta_backward`` + the outer step of each run's algorithm, alternating
between the two so that a change in the machine's load hits both alike, after one warm-up each.
Prints the median and interquartile range of each, and the ratio of the medians (B / A): how much
cheaper ANIL (``--adapt anil``) is than MAML on the same tasks. With ``--memory``, also each run's
peak bytes of one such meta-iteration (torch's profiler, :func:`metaopt.tools.bench.peak_memory_bytes`).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from metaopt.training import load_run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path, nargs=2, metavar="RUN")
    parser.add_argument("--repeats", type=int, default=50, help="timed iterations (default: 50)")
    parser.add_argument("--memory", action="store_true", help="also the peak memory of each")
    args = parser.parse_args()
    torch.set_num_threads(1)
    loaded = [load_run(run) for run in args.runs]
    family, config, _ = loaded[0]
    tasks = family.sample_tasks(config, np.random.default_rng(0), config.meta_batch)
    outers = [torch.optim.Adam(algo.meta_parameters(), lr=0.0) for _, _, algo in loaded]

    def iteration(index: int) -> float:
        algo, outer = loaded[index][2], outers[index]
        start = time.perf_counter()
        outer.zero_grad(set_to_none=True)
        algo.meta_backward(tasks, scale=1 / len(tasks))
        outer.step()
        return time.perf_counter() - start

    for index in (0, 1):  # warm-up
        iteration(index)
    times: list[list[float]] = [[], []]
    for _ in range(args.repeats):
        for index in (0, 1):
            times[index].append(iteration(index))
    medians = []
    for run, record in zip(args.runs, times, strict=True):
        q1, median, q3 = np.percentile(record, [25, 50, 75]) * 1e3
        medians.append(median)
        print(f"{run}: {median:.2f} ms per meta-iteration [{q1:.2f}-{q3:.2f}]")
    print(f"ratio B / A of the medians: {medians[1] / medians[0]:.3f} ({args.repeats} repeats)")
    if args.memory:
        from metaopt.tools.bench import peak_memory_bytes

        for index, run in enumerate(args.runs):
            peak = peak_memory_bytes(lambda index=index: iteration(index))
            print(f"{run}: peak {peak / 2**20:.2f} MiB in one meta-iteration")


if __name__ == "__main__":
    main()
