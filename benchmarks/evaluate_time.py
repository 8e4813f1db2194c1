"""Time a run's final evaluation on one process or under torchrun (docs/distributed.md).

    OMP_NUM_THREADS=1 python -m benchmarks.evaluate_time RUN_DIR --tasks 4000
    OMP_NUM_THREADS=1 torchrun --standalone --nproc-per-node 2 -m benchmarks.evaluate_time RUN_DIR --tasks 4000

Prints the seconds of each of ``--repeats`` calls of the family's ``evaluate`` (every rank
evaluating its share of the held-out tasks, as ``metaopt train`` and ``metaopt eval`` do) and
their median; start-up, loading and writing are left out.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from metaopt.training import EvalRequest, distributed, load_run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    parser.add_argument("--tasks", type=int, default=4000, help="held-out tasks (default: 4000)")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls (default: 3)")
    args = parser.parse_args()
    family, config, algo = load_run(args.run_dir)
    info = distributed.setup(config.dist_backend, config.dist_timeout)
    torch.set_num_threads(1)
    times = []
    for _ in range(args.repeats):
        distributed.barrier(info)
        start = time.perf_counter()
        family.evaluate(algo, config, args.run_dir, EvalRequest(args.tasks, group=info))
        distributed.barrier(info)
        times.append(time.perf_counter() - start)
    if info.is_main:
        shown = ", ".join(f"{t:.2f}" for t in times)
        print(
            f"{family.name}: evaluate on {args.tasks} tasks, {info.world_size} process(es), "
            f"1 thread each: {shown} s (median {statistics.median(times):.2f} s)"
        )
    distributed.teardown(info)


if __name__ == "__main__":
    main()
