"""How far iMAML's inner solve gets on a trained run's tasks, with and without momentum
(docs/results.md).

    OMP_NUM_THREADS=1 python -m benchmarks.imaml_inner_residual RUN [RUN ...] --steps 300

Loads each run (``load_run``), draws one meta-batch of its family and config (seed 0), and prints
the stationarity residual ‖∇L(φ) + λ(φ − θ)‖ / ‖∇L(θ)‖ of the worst and of the median task after
0, 5, 10, 20, 50, 100, ... inner steps of the run's own solve (`IMAML.inner_residuals`: its λ, step
rule and power iterations, the tolerance not applied), plain and with ``inner_momentum``. On a
smooth network (tanh) the residual falls until float32 stops it; on a ReLU network it stalls
where the gradient's jumps at the kinks leave no stationary point for the steps to reach.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from metaopt.algorithms import IMAML
from metaopt.training import load_run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path, nargs="+", metavar="RUN", help="iMAML run directories")
    parser.add_argument("--steps", type=int, default=300, help="inner steps (default: 300)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    marks = sorted({0, 5, 10, 20, *range(50, args.steps + 1, 50), args.steps})
    print(f"steps: {' '.join(str(m) for m in marks)}  (worst task / median task)")
    for run in args.runs:
        family, config, algo = load_run(run)
        if not isinstance(algo, IMAML):
            raise SystemExit(f"{run}: not an iMAML run (--algo {config.algo})")
        tasks = family.sample_tasks(config, np.random.default_rng(0), config.meta_batch)
        for momentum in (False, True):
            algo.rule.inner_momentum = momentum
            residuals = algo.inner_residuals(tasks, args.steps)
            worst = residuals.amax(dim=1)
            median = residuals.median(dim=1).values
            cells = " ".join(f"{float(worst[m]):.2g}/{float(median[m]):.2g}" for m in marks)
            print(f"{run} {'momentum' if momentum else 'plain   '}: {cells}")


if __name__ == "__main__":
    main()
