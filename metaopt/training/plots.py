"""Plots shared by every family (matplotlib, Agg backend, PNG)."""

from __future__ import annotations

import io
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from metaopt.training.checkpoint import atomic_write_bytes

if TYPE_CHECKING:
    from metaopt.algorithms import MetaLearner
    from metaopt.training.family import TaskFamily, TrainConfig

__all__ = ["moving_average", "plot_run", "plot_training_curve", "save_figure"]


def save_figure(fig: Any, path: Path, **kwargs: Any) -> None:
    """``fig.savefig(path)`` written atomically (rendered in memory, then renamed into place):
    a kill or a full disk leaves the earlier plot or none, never half a PNG; closes ``fig``."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format=Path(path).suffix.lstrip(".") or "png", **kwargs)
    plt.close(fig)
    atomic_write_bytes(Path(path), buffer.getvalue())


def plot_run(
    family: TaskFamily,
    config: TrainConfig,
    algo: MetaLearner,
    run_dir: Path,
    evaluation: Mapping[str, Any],
    tag: str = "",
) -> None:
    """Every plot of a run: ``training_curve.png`` from ``metrics.jsonl`` and the family's own
    from ``evaluation``. Written after training and again by ``metaopt eval``, so the pictures
    always show the ``eval.json`` beside them. With a ``tag`` (an evaluation of other tasks or
    steps, ``eval-<tag>.json``), only the family's, named with the tag
    (``RunResults.path``); the run's own stay as they were."""
    from metaopt.training.family import RunResults

    run_dir = Path(run_dir)
    # Read back rather than kept in memory: memory stays flat however long the run.
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    if not tag:
        plot_training_curve(run_dir / "training_curve.png", rows, family.name, config.algo)
    family.plot(algo, config, run_dir, RunResults(rows, evaluation, tag))


def moving_average(values: Sequence[float], window: int) -> np.ndarray:
    """Trailing mean over up to ``window`` points (shorter at the start)."""
    array = np.asarray(values, dtype=np.float64)
    if window <= 1 or array.size == 0:
        return array
    cumsum = np.concatenate([[0.0], np.cumsum(array)])
    stop = np.arange(1, array.size + 1)
    begin = np.maximum(0, stop - window)
    return (cumsum[stop] - cumsum[begin]) / (stop - begin)


def plot_training_curve(
    path: Path, rows: Sequence[Mapping[str, Any]], family: str, algo: str
) -> Path:
    """Support loss before/after adaptation and query loss against the meta-iteration."""
    fig, ax = plt.subplots(figsize=(7, 4))
    if rows:
        iterations = [row["iteration"] for row in rows]
        window = max(1, len(rows) // 50)
        for key, label in (
            ("support_before", "support, before adaptation"),
            ("support_after", "support, after adaptation"),
            ("query", "query, after adaptation (meta-loss)"),
        ):
            ax.plot(iterations, moving_average([row[key] for row in rows], window), label=label)
        ax.set_title(f"{family} / {algo}: meta-training (moving average over {window})")
    ax.set_xlabel("meta-iteration")
    ax.set_ylabel("loss (training tasks)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path, dpi=120)
    return Path(path)
