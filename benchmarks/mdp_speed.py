"""Speed of ``metaopt train mdp`` against a TorchOpt-example-style loop, in the same process.

The reference loop does what TorchOpt's MAML-RL example does: for every task, step the Gymnasium
environment in Python, one (trajectory, step) at a time with a policy forward pass per step, then
the A2C loss, a differentiable SGD step (``torchopt.MetaSGD``), fresh query trajectories the same
way and a backward pass. It is timed for a few meta-iterations and extrapolated.

Then the full seed configuration (500 iterations of 40 tasks × 20 trajectories × 10 steps, with
the periodic held-out evaluation every 50 iterations and the final evaluation and plots) runs
through ``metaopt.training.train``, the code behind ``metaopt train mdp``.

Usage:

    python -m benchmarks.mdp_speed                     # full run (a few minutes)
    python -m benchmarks.mdp_speed --iterations 20     # quick look

Threads: one (``torch.set_num_threads(1)``). The tensors here are tiny; a second intra-op thread
buys nothing, and on a machine whose cores are shared it made iterations up to 40x slower.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.bench_mdp import gym_loop_meta_gradient
from metaopt.training import train
from metaopt.training.config import resolve_config
from rl.policy import CategoricalMLPPolicy
from rl.tabular.env import TabularMDPEnv
from rl.tabular.family import MDPFamily


def gym_loop_iteration(
    policy: CategoricalMLPPolicy,
    env: TabularMDPEnv,
    rng: np.random.Generator,
    generator: torch.Generator,
    tasks: int = 40,
) -> None:
    """One meta-iteration the way TorchOpt's example runs it (Python loops over the env)."""
    outer = torch.optim.Adam(policy.parameters(), lr=1e-3)
    gym_loop_meta_gradient(policy, env, rng, generator, tasks, episodes=20, horizon=10)
    outer.step()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--iterations", type=int, default=500, help="meta-iterations of the full run"
    )
    parser.add_argument(
        "--reference-iterations", type=int, default=2, help="gym-loop iterations timed"
    )
    parser.add_argument("--algo", default="maml")
    args = parser.parse_args()
    torch.set_num_threads(1)

    torch.manual_seed(0)
    policy = CategoricalMLPPolicy(10, 5)
    env = TabularMDPEnv(10, 5, max_episode_steps=10)
    env.reset(seed=0)
    rng, generator = np.random.default_rng(0), torch.Generator().manual_seed(0)
    start = time.perf_counter()
    for _ in range(args.reference_iterations):
        gym_loop_iteration(policy, env, rng, generator)
    reference = (time.perf_counter() - start) / args.reference_iterations
    print(f"TorchOpt-style gym loop: {reference:.3f} s per meta-iteration (no evaluation)")

    family = MDPFamily()
    with tempfile.TemporaryDirectory() as tmp:
        config = resolve_config(
            family,
            {
                "algo": args.algo,
                "preset": "seed",  # TorchOpt's example, which the comparison reproduces
                "iterations": args.iterations,
                "out": str(Path(tmp) / "run"),
            },
        )
        start = time.perf_counter()
        run_dir = train(family, config, progress=False)
        total = time.perf_counter() - start
        rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        evaluation = json.loads((run_dir / "eval.json").read_text())
    loop_seconds = rows[-1]["seconds"]
    per_iteration = loop_seconds / len(rows)
    print(
        f"metaopt train mdp --algo {args.algo}: {len(rows)} iterations in {loop_seconds:.1f} s "
        f"({per_iteration:.3f} s per iteration, periodic evaluation included); "
        f"{total:.1f} s in all with the final evaluation ({evaluation['tasks']} tasks) and plots"
    )
    print(f"speed-up per meta-iteration over the gym loop: {reference / per_iteration:.1f}x")
    print(
        f"the gym loop would take about {reference * args.iterations / 60:.0f} min for "
        f"{args.iterations} iterations (training only)"
    )
    score = evaluation["normalized_score"]
    print(f"final normalised score {score['mean']:.3f} ± {score['ci95']:.3f}")


if __name__ == "__main__":
    main()
