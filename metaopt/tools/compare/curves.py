"""Learning curves: a ``metaopt train`` run per method, watched through a training hook."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from metaopt.algorithms import MetaLearner
from metaopt.task import Task
from metaopt.tools.compare.gradients import draw_tasks, method_algorithm, method_config, model_state
from metaopt.tools.compare.options import HELDOUT_KEY, HELDOUT_STREAM, ModelState
from metaopt.training import (
    TaskFamily,
    TrainConfig,
    TrainingHooks,
    train,
)

__all__ = ["checkpoint_iterations", "family_curve_key", "heldout_query_loss", "run_curve"]


def heldout_query_loss(algo: MetaLearner, tasks: Sequence[Task]) -> float:
    """Mean query loss after ``algo.adapt`` (``inner_steps`` steps) over ``tasks``."""
    total = 0.0
    for task in tasks:
        with algo.adapt(task) as model, torch.no_grad():
            total += float(task.query_loss(model))
    return total / len(tasks)


def _heldout(
    family: TaskFamily, algo: MetaLearner, config: TrainConfig, num_tasks: int
) -> dict[str, float]:
    """The domain-free held-out query loss on the held-out stream's first ``num_tasks`` tasks
    (the global torch RNG left as it was, so the run's own numbers do not change)."""
    with torch.random.fork_rng(devices=[]):
        tasks = draw_tasks(family, config, [HELDOUT_STREAM, config.eval_seed], num_tasks)
        return {HELDOUT_KEY: heldout_query_loss(algo, tasks)}


class _Observer(TrainingHooks):
    """Watches a ``metaopt train`` run: keeps θ at the iterations in ``snapshot_at`` and adds the
    held-out query loss to each periodic evaluation.

    The run stays an ordinary ``metaopt train`` run (same tasks, same numbers; its directory works
    with ``metaopt eval``), and the loop keeps this hook's time out of the run's clock.
    """

    def __init__(self, family: TaskFamily, snapshot_at: set[int], heldout_tasks: int) -> None:
        self.family = family
        self.snapshot_at = snapshot_at
        self.heldout_tasks = heldout_tasks
        self.snapshots: dict[int, ModelState] = {}
        self.evaluated: list[int] = []

    def _snapshot(self, completed: int, algo: MetaLearner) -> None:
        if completed in self.snapshot_at:
            self.snapshots[completed] = model_state(algo.model)

    def on_iteration_start(self, iteration: int, algo: MetaLearner) -> None:
        self._snapshot(iteration - 1, algo)

    def on_evaluation(
        self, iteration: int, algo: MetaLearner, config: TrainConfig
    ) -> dict[str, float]:
        self.evaluated.append(iteration)
        return _heldout(self.family, algo, config, self.heldout_tasks)

    def on_train_end(self, algo: MetaLearner, config: TrainConfig) -> None:
        self._snapshot(config.iterations, algo)


def run_curve(
    family: TaskFamily,
    config: TrainConfig,
    method: str,
    run_dir: Path,
    *,
    every: int,
    heldout_tasks: int,
    snapshot_at: set[int],
    initial: ModelState,
    progress: bool | None,
) -> tuple[dict[str, Any], dict[int, ModelState]]:
    """One ``metaopt train`` run of ``method``; its learning curve and the snapshots asked for."""
    config = dataclasses.replace(method_config(config, method), eval_every=every, out=str(run_dir))
    _, start_algo = method_algorithm(family, config, method, config.inner_steps, initial)
    points = [
        {
            "iteration": 0,
            "train_seconds": 0.0,
            **family.periodic_eval(start_algo, config),
            **_heldout(family, start_algo, config, heldout_tasks),
        }
    ]
    observer = _Observer(family, snapshot_at, heldout_tasks)
    train(family, config, progress=progress, hooks=[observer])
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    evaluated = set(observer.evaluated)
    keys = [key for key in points[0] if key not in ("iteration", "train_seconds")]
    for row in rows:
        if row["iteration"] in evaluated:
            points.append(
                {
                    "iteration": row["iteration"],
                    "train_seconds": row["seconds"],
                    **{key: row.get(key) for key in keys},
                }
            )
    evaluation = json.loads((run_dir / "eval.json").read_text())
    trained = str(config.inner_steps)
    final = {
        "metric": evaluation.get("metric"),
        "tasks": evaluation.get("tasks"),
        "by_steps": evaluation.get("by_steps", {}),
        "at_trained_steps": evaluation.get("by_steps", {}).get(trained),
    }
    total = rows[-1]["seconds"] if rows else 0.0
    curve = {
        "run_dir": str(run_dir),
        "iterations": config.iterations,
        "outer_step": config.outer_step,
        "train_seconds": round(total, 4),
        "points": points,
        "final_eval": final,
    }
    return curve, observer.snapshots


def family_curve_key(keys: Sequence[str], metric: str) -> str | None:
    """The family's post-adaptation number among its periodic-evaluation keys, if it names one.

    A key that contains the family's metric name and ``after`` or ``post`` (``val_mse_after``,
    ``test_post_return``), and is not a confidence interval or a difference.
    """
    for key in keys:
        if metric in key and ("after" in key or "post" in key):
            if "ci95" not in key and "minus" not in key and key != HELDOUT_KEY:
                return key
    return None


# -- the whole comparison ------------------------------------------------------------------------


def checkpoint_iterations(iterations: int, checkpoints: int) -> list[int]:
    """``checkpoints`` evenly spaced iterations of ``1 … iterations``, ending at the last one."""
    if iterations < 1 or checkpoints < 1:
        return []
    return sorted({max(1, round(iterations * j / checkpoints)) for j in range(1, checkpoints + 1)})
