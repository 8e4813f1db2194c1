"""The learning results of docs/results.md: MAML, first-order MAML, Meta-SGD and Reptile (or
the algorithms `--algos` names) under one ``mdp`` preset.

Each algorithm is trained exactly as ``metaopt train mdp --algo ALGO --preset PRESET`` would
(same code path, [`metaopt.training.train`][metaopt.training.train]), one after the other, and the
held-out results of each ``eval.json`` are printed as rows of a Markdown table.

Usage:

    python -m benchmarks.mdp_results --preset none     # the defaults: MAML-RL example's settings, dice
    python -m benchmarks.mdp_results --preset seed     # TorchOpt's MAML-RL configuration exactly
    python -m benchmarks.mdp_results --preset tuned    # inner lr / steps chosen on a sweep

Threads: one (``torch.set_num_threads(1)``), see benchmarks/mdp_speed.py.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from metaopt.training import train
from metaopt.training.config import resolve_config
from metaopt.training.family import ALGORITHMS
from rl.tabular.family import MDPFamily


def fmt(entry: dict) -> str:
    diverged = entry.get("diverged", entry.get("diverged_tasks"))  # the latter: older runs
    if diverged:  # no mean over the other tasks: it would leave out the worst ones
        return f"diverged ({diverged} tasks)"
    return f"{entry['mean']:.2f} ± {entry['ci95']:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--preset", default="seed", help="preset of the mdp family ('none': the defaults)"
    )
    parser.add_argument("--meta-gradient", default=None, help="override the estimator")
    # iMAML is not part of the RL results: its implicit gradient re-evaluates the support loss,
    # which for an RL task samples new trajectories each time (an inconsistent linear system).
    rl_algos = [a for a in ALGORITHMS if a != "imaml"]
    parser.add_argument("--algos", default=",".join(rl_algos), help="comma-separated")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs/rl-results", help="parent of the run directories")
    args = parser.parse_args()
    torch.set_num_threads(1)

    family = MDPFamily()
    rows = []
    for algo in args.algos.split(","):
        out = Path(args.out) / f"{args.preset}-{algo}-seed{args.seed}"
        overrides = {"algo": algo, "seed": args.seed, "out": str(out)}
        if args.preset != "none":
            overrides["preset"] = args.preset
        if args.meta_gradient is not None:
            overrides["meta_gradient"] = args.meta_gradient
        config = resolve_config(family, overrides)
        start = time.perf_counter()
        run_dir = train(family, config, progress=False)
        seconds = time.perf_counter() - start
        evaluation = json.loads((run_dir / "eval.json").read_text())
        k = str(evaluation["trained_steps"])
        score = evaluation["normalized_score"]
        rows.append(
            f"| {algo} | {k} | {fmt(evaluation['by_steps']['0'])} | "
            f"{fmt(evaluation['by_steps'][k])} | {fmt(evaluation['post_minus_pre'])} | "
            f"**{fmt(score)}** | {fmt(evaluation['baseline']['by_steps'][k])} | "
            f"{fmt(evaluation['meta_minus_baseline'][k])} | {seconds:.0f} s |"
        )
        print(rows[-1], flush=True)
    print(
        f"\npreset {args.preset}, seed {args.seed}, {evaluation['tasks']} held-out tasks; "
        f"random {fmt(evaluation['random'])}, optimal {fmt(evaluation['optimal'])}\n"
    )
    print(
        "| algorithm | inner steps K | return before (0 steps) | return after K steps | "
        "after − before (paired) | normalised score | baseline after K steps | "
        "meta − baseline (paired) | wall time |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
