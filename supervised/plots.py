"""The figure every supervised family draws (matplotlib, Agg backend, PNG): the held-out metric
against adaptation steps. A family's own figures are in its room (`supervised.sine.plots`)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from metaopt.training.plots import (
    add_legend,
    integer_ticks,
    mark_trained_steps,
    plot_summary_curves,
    save_figure,
    summary_point,
)
from supervised.evaluation import LOSSES

__all__ = ["plot_metric_vs_steps"]


def plot_metric_vs_steps(
    path: Path,
    evaluation: Mapping[str, Any],
    *,
    title: str,
    ylabel: str,
    trained_steps: int | None = None,
) -> Path:
    """Held-out metric against adaptation steps, meta-learned vs baseline, with 95% CI bands.

    Draws one panel per protocol in ``evaluation`` (the main one, and ``protocol_10pt`` when
    present); ``trained_steps`` (the inner steps of meta-training) is marked on the main panel.
    Where tasks diverged (`supervised.evaluation.mark_diverged`) a step has no point: the line
    stops and a cross with the count marks it (`metaopt.training.plots.plot_summary_curve`),
    never a mean over the other tasks, which would not compare.
    """
    panels = [("held-out tasks", evaluation)]
    if "protocol_10pt" in evaluation:
        panels.append((_protocol_name(evaluation), evaluation["protocol_10pt"]))
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.4), squeeze=False)
    for ax, (name, block) in zip(axes[0], panels, strict=True):
        curves = (
            ("meta-learned", block["by_steps"], "tab:blue"),
            ("pretrained baseline", block["baseline"]["by_steps"], "tab:orange"),
        )
        higher = block.get("metric") not in LOSSES
        diverged = plot_summary_curves(
            ax, curves, tasks=block.get("tasks"), higher_is_better=higher
        )
        spread = [
            m for _, by_steps, _ in curves for m, _, _ in map(summary_point, by_steps.values())
        ]
        spread = [m for m in spread if m > 0]
        if spread and max(spread) > 100 * min(spread):
            ax.set_yscale("log")
        if trained_steps is not None and block is evaluation:
            mark_trained_steps(ax, trained_steps)
        integer_ticks(ax.xaxis)
        ax.set_xlabel("adaptation steps")
        ax.set_ylabel(ylabel)
        first, *notes = name.split("\n")
        lines = [f"{first} ({block['tasks']} tasks, 95% CI)", *notes]
        ax.set_title("\n".join(lines), fontsize="medium")
        ax.grid(alpha=0.3)
        add_legend(ax, diverged > 0, fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    save_figure(fig, path, dpi=120)  # atomically: a kill leaves no half PNG
    return Path(path)


def _protocol_name(evaluation: Mapping[str, Any]) -> str:
    """The 10-point panel's title: its step size, and whether the model was meta-trained for
    it (a step or a rule the model was not trained for may diverge)."""
    fixed = evaluation["protocol_10pt"].get("adaptation", {}).get("lr")
    own = evaluation.get("adaptation", {})
    if not fixed:
        return "10-point protocol"
    name = f"10-point protocol\nplain SGD at {fixed:g}"
    rule = own.get("rule")
    if rule == "sgd" and own.get("lr") not in (None, fixed):
        name += f"; meta-trained for steps of {own['lr']:g}: may diverge"
    elif rule == "sgd":
        name += ", the step size it was meta-trained for"
    elif rule is not None:
        name += f"; meta-trained with {rule.split(' (')[0]}: may diverge"
    return name
