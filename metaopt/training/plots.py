"""Plots shared by every family (matplotlib, Agg backend, PNG)."""

from __future__ import annotations

import io
import json
import math
import weakref
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.lines import Line2D
from matplotlib.text import Text
from matplotlib.ticker import MaxNLocator
from matplotlib.transforms import offset_copy

from metaopt.training.checkpoint import atomic_write_bytes

if TYPE_CHECKING:
    from metaopt.algorithms import MetaLearner
    from metaopt.training.family import TaskFamily, TrainConfig

__all__ = [
    "DIVERGED_LEGEND",
    "add_legend",
    "integer_ticks",
    "mark_trained_steps",
    "moving_average",
    "plot_run",
    "plot_summary_curve",
    "plot_summary_curves",
    "plot_training_curve",
    "robust_ylim",
    "save_figure",
    "summary_point",
    "text_outside_figure",
]

#: The marks `plot_summary_curve` put on each axes so far, by step (for the next to go beside).
_MARKS: weakref.WeakKeyDictionary[Any, dict[float, int]] = weakref.WeakKeyDictionary()

#: The legend entry of the marks that `plot_summary_curve` puts where tasks diverged.
DIVERGED_LEGEND = "diverged on some tasks: no mean drawn"


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
        drawn = []
        for key, label in (
            ("support_before", "support, before adaptation"),
            ("support_after", "support, after adaptation"),
            ("query", "query, after adaptation (meta-loss)"),
        ):
            values = [math.nan if row[key] is None else row[key] for row in rows]
            drawn.append(moving_average(values, window))
            ax.plot(iterations, drawn[-1], label=label)
        robust_ylim(ax, drawn, iterations)
        ax.set_title(f"{family} / {algo}: meta-training (moving average over {window})")
    integer_ticks(ax.xaxis)
    ax.set_xlabel("meta-iteration")
    ax.set_ylabel("loss (training tasks)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path, dpi=120)
    return Path(path)


def text_outside_figure(fig: Any, tolerance: float = 0.5) -> list[str]:
    """The texts of ``fig`` that a reader would find cut off: every visible, non-empty ``Text``
    artist (titles, labels, tick labels, legend entries, annotations) whose window extent leaves
    the figure's bounding box once drawn by the Agg renderer, as ``"text" at (x0, y0, x1, y1)``.

    Only the tick labels that are drawn count (an axis keeps spare ticks outside its view).
    """
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    box = fig.bbox
    ticks: set[int] = set()  # tick labels: only those of the ticks in view are drawn
    drawn = []
    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            low, high = sorted(axis.get_view_interval())
            slack = 1e-9 * max(abs(low), abs(high), 1.0)
            for tick in axis.get_major_ticks() + axis.get_minor_ticks():
                ticks.update((id(tick.label1), id(tick.label2)))
                if low - slack <= tick.get_loc() <= high + slack:
                    drawn += [tick.label1, tick.label2]
    texts = [t for t in fig.findobj(Text) if id(t) not in ticks] + drawn
    outside = []
    for text in texts:
        if not text.get_visible() or not text.get_text().strip():
            continue
        extent = text.get_window_extent(renderer)
        if (
            extent.x0 < box.x0 - tolerance
            or extent.y0 < box.y0 - tolerance
            or extent.x1 > box.x1 + tolerance
            or extent.y1 > box.y1 + tolerance
        ):
            corners = ", ".join(f"{v:.0f}" for v in extent.extents)
            outside.append(f"{text.get_text()!r} at ({corners}) outside the figure's {box.bounds}")
    return outside


def summary_point(value: Mapping[str, Any]) -> tuple[float, float, int]:
    """``(mean, ci95, diverged)`` of one summary (`metaopt.stats.task_summary`, as eval.json holds
    it): where some tasks diverged, the count and a NaN mean and interval, as a mean over the
    other tasks does not compare with one over all of them (it drops the worst)."""
    diverged = value.get("diverged", value.get("diverged_tasks"))  # the latter: older RL runs
    if diverged:
        return math.nan, math.nan, int(diverged)
    mean, ci95 = value.get("mean"), value.get("ci95")
    return (
        math.nan if mean is None else float(mean),
        math.nan if ci95 is None else float(ci95),
        0,
    )


def plot_summary_curves(
    ax: Any,
    curves: Sequence[tuple[str, Mapping[str, Mapping[str, Any]], str]],
    *,
    tasks: int | None,
    higher_is_better: bool,
    errorbars: bool = False,
) -> int:
    """`plot_summary_curve` of each ``(label, by_steps, color)``; the steps marked diverged."""
    style: dict[str, Any] = {"tasks": tasks, "higher_is_better": higher_is_better}
    return sum(
        plot_summary_curve(ax, by_steps, label=label, color=color, errorbars=errorbars, **style)
        for label, by_steps, color in curves
    )


def plot_summary_curve(
    ax: Any,
    by_steps: Mapping[str, Mapping[str, Any]],
    *,
    label: str,
    color: str,
    tasks: int | None,
    higher_is_better: bool,
    errorbars: bool = False,
) -> int:
    """One curve of an evaluation (``{"<steps>": summary}``): the mean over tasks against the
    step count, with its 95% interval as a band (or error bars).

    A step where some tasks diverged gets no point: the line stops there, and a cross against
    the frame at the worse edge (the top for a loss, the bottom for a return), in the curve's
    colour, with ``"472/600 diverged"`` beside it. A second curve's mark at the same step
    goes beside the first, its count below (above) the first's.
    Returns how many steps were so marked; the caller adds `DIVERGED_LEGEND` to the legend when
    there are any.
    """
    steps = sorted(by_steps, key=int)
    x = np.array([int(k) for k in steps], dtype=float)
    points = [summary_point(by_steps[k]) for k in steps]
    mean = np.array([p[0] for p in points])
    half = np.array([p[1] for p in points])
    ax.plot(x, mean, "o-", color=color, label=label, zorder=3)
    if errorbars:
        ax.errorbar(x, mean, yerr=half, fmt="none", color=color, capsize=3, zorder=3)
    else:
        ax.fill_between(x, mean - half, mean + half, color=color, alpha=0.25, linewidth=0)
    # The mark sits against the frame at the worse edge (never where a value could be read),
    # its count beside it; several curves' marks at one step side by side, counts stacked.
    edge = 0.06 if higher_is_better else 0.94
    inward = 1 if higher_is_better else -1
    taken = _MARKS.setdefault(ax, {})
    marked = 0
    for k, (_, _, diverged) in zip(x, points, strict=True):
        if not diverged:
            continue
        marked += 1
        before = taken[k] = taken.get(k, -1) + 1  # marks already at this step
        place = offset_copy(ax.get_xaxis_transform(), fig=ax.figure, x=7 * before, units="points")
        ax.plot([k], [edge], "X", color=color, markersize=8, transform=place, zorder=4)
        of = f"/{tasks}" if tasks else ""
        left = k == x.max() and len(x) > 1  # the last step's count goes to the left
        ax.annotate(
            f"{diverged}{of}\ndiverged",
            (k, edge),
            xycoords=place,
            xytext=(-7 if left else 7, inward * 22 * before),
            textcoords="offset points",
            ha="right" if left else "left",
            va="center",
            fontsize=7.5,
            linespacing=1.0,
            color=color,
        )
    return marked


def add_legend(ax: Any, diverged: bool, **kwargs: Any) -> None:
    """``ax.legend(**kwargs)``, with the entry `DIVERGED_LEGEND` when ``diverged``."""
    handles, labels = ax.get_legend_handles_labels()
    if diverged:
        handles.append(Line2D([], [], marker="X", color="0.3", linestyle="none"))
        labels.append(DIVERGED_LEGEND)
    ax.legend(handles, labels, **kwargs)


def mark_trained_steps(ax: Any, steps: int) -> None:
    """A dotted vertical line at the number of inner steps the model was meta-trained for."""
    ax.axvline(
        steps,
        color="tab:red",
        linestyle="-.",
        linewidth=1,
        alpha=0.7,
        zorder=1,
        label=f"meta-trained for {steps} step{'s' if steps != 1 else ''}",
    )


def integer_ticks(axis: Any) -> None:
    """Ticks at whole numbers only (meta-iterations, step counts: no 1.5)."""
    axis.set_major_locator(MaxNLocator(integer=True, steps=[1, 2, 5, 10]))


def robust_ylim(ax: Any, series: Sequence[np.ndarray], x: Sequence[float]) -> None:
    """Keep a few outlying points (the first iterations' spike) from squashing the curves: when
    the plotted values' whole range is over three times that of their 5%-95% quantiles, show
    the quantiles' range (with a margin) and say in the plot which points lie beyond it. (5%:
    a moving average over a fiftieth of the run spreads one iteration's spike over 2%.)"""
    values = np.concatenate([np.asarray(s, dtype=float) for s in series] or [np.empty(0)])
    values = values[np.isfinite(values)]
    if values.size < 20:
        return
    low, high = np.quantile(values, [0.05, 0.95])
    if not (values.max() - values.min()) > 3 * (high - low) > 0:
        return
    margin = 0.1 * (high - low)
    ax.set_ylim(low - margin, high + margin)
    notes: list[tuple[str, float, float, int]] = []
    for line in series:
        line = np.asarray(line, dtype=float)
        for side, beyond in (("above", line > high + margin), ("below", line < low - margin)):
            if beyond.any():
                at = x[int(np.argmax(beyond))]
                extreme = line[beyond].max() if side == "above" else line[beyond].min()
                notes.append((side, float(at), float(extreme), int(beyond.sum())))
    if notes:
        count = sum(n[3] for n in notes)
        side, first, extreme, _ = max(notes, key=lambda n: abs(n[2]))
        ax.text(
            0.99,
            0.98 if side == "above" else 0.02,
            f"{count} point{'s' if count != 1 else ''} off the scale, the first at iteration "
            f"{first:g} ({'up' if side == 'above' else 'down'} to {extreme:.3g})",
            transform=ax.transAxes,
            ha="right",
            va="top" if side == "above" else "bottom",
            fontsize=8,
            color="0.3",
        )
