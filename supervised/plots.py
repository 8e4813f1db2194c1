"""Figures of the supervised families (matplotlib, Agg backend, PNG)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch

from metaopt.algorithms import MetaLearner
from metaopt.training.plots import save_figure
from supervised.batch import SupervisedTask

__all__ = ["plot_metric_vs_steps", "plot_sine_adaptation"]

#: Snapshots of the Reptile demo's figure.
SNAPSHOTS = (0, 8, 16, 24, 32)


def plot_metric_vs_steps(
    path: Path, evaluation: Mapping[str, Any], *, title: str, ylabel: str
) -> Path:
    """Held-out metric against adaptation steps, meta-learned vs baseline, with 95% CI bands.

    Draws one panel per protocol in ``evaluation`` (the main one, and ``protocol_10pt`` when
    present). Where tasks diverged (:func:`supervised.evaluation.mark_diverged`) a point is the
    mean of the other tasks, labelled with the count, never a mean that a blow-up dominates.
    """
    panels = [("held-out tasks", evaluation)]
    if "protocol_10pt" in evaluation:
        panels.append((_protocol_name(evaluation), evaluation["protocol_10pt"]))
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4), squeeze=False)
    for ax, (name, block) in zip(axes[0], panels, strict=True):
        spread = []
        for label, by_steps, color in (
            ("meta-learned", block["by_steps"], "tab:blue"),
            ("pretrained baseline", block["baseline"]["by_steps"], "tab:orange"),
        ):
            steps, mean, half = _finite_summary(by_steps)
            ax.plot(steps, mean, "o-", color=color, label=label)
            ax.fill_between(steps, mean - half, mean + half, color=color, alpha=0.25)
            spread += [m for m in mean if m > 0]
            for step, value in by_steps.items():
                if "diverged" in value:  # say so on the plot rather than drop the point silently
                    y = value.get("finite", {}).get("mean", max(spread, default=1.0))
                    ax.annotate(
                        f"{value['diverged']} diverged",
                        (int(step), y),
                        xytext=(0, 8),
                        textcoords="offset points",
                        ha="center",
                        color=color,
                        fontsize=8,
                    )
        if spread and max(spread) > 100 * min(spread):
            ax.set_yscale("log")
        ax.set_xlabel("adaptation steps")
        ax.set_ylabel(ylabel)
        ax.set_title(f"{name} ({block['tasks']} tasks, 95% CI)")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    save_figure(fig, path, dpi=120)  # atomically: a kill leaves no half PNG
    return Path(path)


def _protocol_name(evaluation: Mapping[str, Any]) -> str:
    """The 10-point panel's title: its step size, fixed for every run so that runs compare on
    it, and the model's own when that differs (a step the model was not trained for may diverge)."""
    fixed = evaluation["protocol_10pt"].get("adaptation", {}).get("lr")
    own = evaluation.get("adaptation", {})
    name = f"10-point protocol: SGD at {fixed:g} for every run" if fixed else "10-point protocol"
    if fixed and own.get("rule") == "sgd" and own.get("lr") not in (None, fixed):
        name += f"\n(this model was meta-trained for steps of {own['lr']:g})"
    return name


def _finite_summary(
    by_steps: Mapping[str, Mapping[str, Any]],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Steps, means and CI half-widths; where some tasks diverged, those of the other tasks."""
    rows = []
    for step, value in by_steps.items():
        if "diverged" in value:
            value = value.get("finite", {"mean": np.nan, "ci95": np.nan})
        rows.append((int(step), value["mean"], value["ci95"]))
    steps, mean, half = (np.array(column, dtype=float) for column in zip(*rows, strict=True))
    return steps, mean, half


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
    predictions after 0, 8, 16, 24 and 32 adaptation steps (blue to red); the baseline after 32
    steps dashed."""
    amplitude = float(task.batch.info["amplitude"][task.index])
    phase = float(task.batch.info["phase"][task.index])
    x = torch.linspace(x_range[0], x_range[1], 200).unsqueeze(-1)
    truth = amplitude * np.sin(x.squeeze(-1).numpy() + phase)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    predictions = _predictions(algo, task, x, SNAPSHOTS)
    for k, prediction in zip(SNAPSHOTS, predictions, strict=True):
        frac = k / SNAPSHOTS[-1]
        ax.plot(x, prediction, color=(frac, 0, 1 - frac), label=f"after {k} steps")
    if baseline is not None:
        (after,) = _predictions(baseline, task, x, [SNAPSHOTS[-1]])
        ax.plot(x, after, "--", color="0.5", label=f"baseline after {SNAPSHOTS[-1]} steps")
    ax.plot(x, truth, color=(0, 0.7, 0), linewidth=2, label="true")
    ax.plot(task.support_x.squeeze(-1), task.support_y.squeeze(-1), "kx", label="support")
    mse = float(np.mean((predictions[-1] - truth) ** 2))
    ax.set_title(f"{title} (MSE on the curve after {SNAPSHOTS[-1]} steps: {mse:.3f})")
    ax.set_ylim(-max(5.0, amplitude + 1), max(5.0, amplitude + 1))
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path, dpi=120)  # atomically: a kill leaves no half PNG
    return Path(path)
