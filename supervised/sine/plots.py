"""The Reptile demo's figure of a ``sine`` run (``adaptation.png``; matplotlib, Agg backend)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch

from metaopt.algorithms import MetaLearner
from metaopt.training.plots import save_figure
from supervised.batch import SupervisedTask
from supervised.evaluation import DIVERGENCE_FACTOR

__all__ = ["plot_sine_adaptation"]

#: Snapshots of the Reptile demo's figure.
SNAPSHOTS = (0, 8, 16, 24, 32)


def _predictions(
    learner: MetaLearner, task: SupervisedTask, x: torch.Tensor, steps: Sequence[int]
) -> list[np.ndarray]:
    found = []
    for k in steps:
        with learner.adapt(task, steps=k) as model, torch.no_grad():
            found.append(model(x).squeeze(-1).numpy())
    return found


def plot_sine_adaptation(
    path: Path,
    algo: MetaLearner,
    task: SupervisedTask,
    *,
    x_range: tuple[float, float],
    baseline: MetaLearner | None = None,
    title: str = "",
) -> Path:
    """The Reptile demo's figure: the true curve, the support points, and the meta-learned model's
    predictions after 0, 8, 16, 24 and 32 adaptation steps (blue to red) and after the number of
    steps it was meta-trained for (``algo.inner_steps``, drawn thick); the baseline after 32
    steps dashed.

    A prediction whose MSE on the curve is not finite or above
    `DIVERGENCE_FACTOR` times the unadapted model's is not drawn
    (it would be a vertical line): its legend entry says it diverged, as does the title.
    """
    amplitude = float(task.batch.info["amplitude"][task.index])
    phase = float(task.batch.info["phase"][task.index])
    x = torch.linspace(x_range[0], x_range[1], 200).unsqueeze(-1)
    truth = amplitude * np.sin(x.squeeze(-1).numpy() + phase)
    trained, last = algo.inner_steps, SNAPSHOTS[-1]
    steps = sorted(set(SNAPSHOTS) | {trained})
    fig, ax = plt.subplots(figsize=(7, 4.5))
    predictions = dict(zip(steps, _predictions(algo, task, x, steps), strict=True))
    errors = {k: _curve_mse(p, truth, predictions[0]) for k, p in predictions.items()}
    for k, prediction in predictions.items():
        frac = k / last if k <= last else 1.0
        label = f"after {k} step{'s' if k != 1 else ''}"
        if k == trained:
            label += " (meta-trained for)"
        style = {"color": (frac, 0, 1 - frac), "linewidth": 2.5 if k == trained else 1.2}
        if errors[k] is None:  # a legend entry without a line
            ax.plot([], [], ":", label=f"{label}: diverged, not drawn", **style)
        else:
            ax.plot(x, prediction, label=label, **style)
    if baseline is not None:
        (after,) = _predictions(baseline, task, x, [last])
        (before,) = _predictions(baseline, task, x, [0])
        if _curve_mse(after, truth, before) is None:
            ax.plot([], [], "--", color="0.5", label=f"baseline after {last} steps: diverged")
        else:
            ax.plot(x, after, "--", color="0.5", label=f"baseline after {last} steps")
    ax.plot(x, truth, color=(0, 0.7, 0), linewidth=2, label="true")
    ax.plot(task.support_x.squeeze(-1), task.support_y.squeeze(-1), "kx", label="support")
    shown = [trained] if trained == last else [trained, last]
    parts = [
        f"{k} step{'s' if k != 1 else ''}: "
        + ("diverged" if errors[k] is None else f"{errors[k]:.3f}")
        for k in shown
    ]
    ax.set_title(f"{title}\nMSE on the curve after " + ", after ".join(parts), fontsize=10)
    ax.set_ylim(-max(5.0, amplitude + 1), max(5.0, amplitude + 1))
    ax.legend(loc="lower right", fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path, dpi=120)  # atomically: a kill leaves no half PNG
    return Path(path)


def _curve_mse(prediction: np.ndarray, truth: np.ndarray, before: np.ndarray) -> float | None:
    """MSE of ``prediction`` on the curve; ``None`` when it diverged (not finite, or above
    `DIVERGENCE_FACTOR` times the MSE of the unadapted prediction ``before``)."""
    with np.errstate(over="ignore", invalid="ignore"):
        mse = float(np.mean((prediction.astype(np.float64) - truth) ** 2))
        start = float(np.mean((before.astype(np.float64) - truth) ** 2))
    if not np.isfinite(mse) or mse > DIVERGENCE_FACTOR * start:
        return None
    return mse
