"""Held-out evaluation: returns after 0..k inner steps, and their summaries over tasks.

Every number is a mean over held-out tasks with the half-width of its 95% confidence interval
(`metaopt.stats.task_summary`, 1.96·sd/sqrt(n)); a task's value is the mean undiscounted return
of the ``trajectories`` episodes sampled for it. Differences (after − before adaptation,
meta-learned − baseline) are paired per task.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from metaopt.algorithms import MetaLearner
from metaopt.stats import task_summary
from rl.task import RLTaskBatch

__all__ = [
    "INTERVAL",
    "adaptation_returns",
    "curve_summary",
    "flat_summaries",
    "summarize",
]

INTERVAL = (
    "mean over held-out tasks ± half-width of its 95% confidence interval, 1.96·sd/sqrt(n); a "
    "task's value is the mean return of its sampled episodes; differences are paired per task"
)


def adaptation_returns(algo: MetaLearner, batch: RLTaskBatch, steps: int) -> torch.Tensor:
    """``[steps + 1, T]``: each task's mean episode return after 0, 1, ..., ``steps`` inner steps.

    One adaptation of ``steps`` steps per task gives the whole curve: the support sample of
    inner step k is drawn with the parameters after k steps, so its return estimates the return
    after k steps; the last row is a query sample of the fully adapted policy.

    Adaptation uses ``algo``'s own update rule (SGD or Adam at ``inner_lr``, Meta-SGD's learned
    rates). All tasks are adapted at once by the core's vectorised engine unless ``algo`` was
    built with ``engine="loop"``, which adapts them one by one with ``algo.adapt``; both sample
    the same episodes (see `rl.task`), so they give the same numbers.

    Args:
        algo: The learner whose adaptation is evaluated.
        batch: Fresh tasks (no sample drawn yet).
        steps: Inner steps >= 0.
    """
    if any(task.support_returns or task.query_returns for task in batch):
        raise ValueError(
            f"adaptation_returns needs a fresh {type(batch).__name__} (its tasks were used)"
        )
    if algo.engine == "loop":
        for task in batch:
            with algo.adapt(task, steps=steps) as adapted:
                task.sample_returns(adapted)
    else:
        # The algorithm's inner update, applied by the vectorised engine to every task at once.
        batch.sample_queries(algo.adapt_batch(batch, steps))
    return torch.stack(
        [
            torch.stack([r.mean() for r in [*task.support_returns, task.query_returns[-1]]])
            for task in batch
        ],
        dim=1,
    ).detach()


def summarize(values: torch.Tensor | np.ndarray) -> dict[str, Any]:
    """``{"mean": m, "ci95": c}`` over tasks (see `INTERVAL`): the supervised families'
    `metaopt.stats.task_summary`, so that eval.json reads alike in every domain.

    Tasks whose policy diverged (non-finite logits, hence NaN returns) are counted in
    ``diverged`` and the others summarised in ``finite`` (``{"mean", "ci95", "tasks"}``); the
    top-level mean is then NaN, never a number that hides the failure.
    """
    return task_summary(np.asarray(values, dtype=np.float64))


def curve_summary(steps: Sequence[int], curve: torch.Tensor | np.ndarray) -> dict[str, Any]:
    """``{"<k>": {"mean", "ci95"}}`` for the rows ``steps`` of a ``[max_steps + 1, T]`` curve."""
    return {str(k): summarize(curve[k]) for k in steps}


def flat_summaries(named: dict[str, torch.Tensor | np.ndarray]) -> dict[str, float]:
    """``{name: mean, name + "_ci95": half-width}`` for the periodic metrics' log lines."""
    metrics = {}
    for key, values in named.items():
        summary = summarize(values)
        metrics[key] = summary["mean"]
        metrics[key + "_ci95"] = summary["ci95"]
    return metrics
