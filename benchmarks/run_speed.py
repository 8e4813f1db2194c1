"""Seconds per meta-iteration of finished runs, and what a longer protocol would cost on more cores.

For each run directory: its processes (``config.json``'s ``world_size``), meta-batch, the tasks
each process adapts (⌈B / W⌉), and the median of the per-iteration steps of ``metrics.jsonl``'s
``seconds`` (what ``metaopt scale`` reports: it leaves out start-up and periodic evaluations).

With ``--project TASKS ITERATIONS``, the runs' medians are fitted by least squares to
``t = s + c · ⌈B / W⌉`` — ``c`` the time of one task's share of an iteration (sampling, inner
step, its part of every Fisher-vector product and line-search evaluation), ``s`` the part no
process count divides (the trust-region step's vector algebra, the collectives, Python) — which
needs runs with at least two different tasks per process, and the protocol's time is printed for
each of ``--cores`` processes: ``ITERATIONS · (s + c · ⌈TASKS / W⌉)``. Beyond ``TASKS`` processes
there is no task left to split, so the time stops falling there.

Run: ``python -m benchmarks.run_speed RUN_DIR [RUN_DIR ...] [--project 40 500 --cores 1 2 8 64]``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import statistics
from pathlib import Path

import numpy as np


def speed(run_dir: Path) -> dict[str, float]:
    """Processes, meta-batch, tasks per process and median seconds per iteration of a run."""
    meta = json.loads((run_dir / "config.json").read_text())
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    seconds = [row["seconds"] for row in rows]
    steps = [b - a for a, b in itertools.pairwise(seconds)]
    if not steps:
        raise SystemExit(f"{run_dir}: fewer than 2 iterations in metrics.jsonl, no step to time")
    world, batch = int(meta["world_size"]), int(meta["config"]["meta_batch"])
    return {
        "processes": world,
        "meta_batch": batch,
        "tasks_per_process": math.ceil(batch / world),
        "iterations": len(rows),
        "median_s": statistics.median(steps),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, metavar="RUN_DIR")
    parser.add_argument("--project", nargs=2, type=int, metavar=("TASKS", "ITERATIONS"))
    parser.add_argument("--cores", nargs="+", type=int, default=[1, 2, 8, 64])
    args = parser.parse_args(argv)
    found = [speed(run) for run in args.runs]
    for run, row in zip(args.runs, found, strict=True):
        print(
            f"{run}: {row['processes']} process(es), meta-batch {row['meta_batch']} "
            f"({row['tasks_per_process']} per process), {row['iterations']} iterations, "
            f"{row['median_s']:.3f} s per iteration (median)"
        )
    if args.project is None:
        return
    tasks, iterations = args.project
    k = np.array([row["tasks_per_process"] for row in found], dtype=float)
    if len(set(k)) < 2:
        parser.error("--project needs runs with at least two different tasks per process")
    (c, s), *_ = np.linalg.lstsq(np.stack([k, np.ones_like(k)], 1), [r["median_s"] for r in found])
    print(f"fit: {s:.3f} s per iteration undivided + {c:.3f} s per task per process")
    for cores in args.cores:
        per_iteration = s + c * math.ceil(tasks / cores)
        hours = iterations * per_iteration / 3600
        note = " (no task left to split: as many processes as tasks)" if cores > tasks else ""
        print(
            f"  {cores:3d} core(s): {per_iteration:7.2f} s per iteration, {hours:6.2f} h for "
            f"{iterations} iterations of {tasks} tasks{note}"
        )


if __name__ == "__main__":
    main()
