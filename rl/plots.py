"""Figures of an RL run that every family draws: returns against meta-iteration and against inner
steps (a family's own pictures are in its room: `rl.nav2d.plots`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from metaopt.training.plots import (
    add_legend,
    integer_ticks,
    mark_trained_steps,
    moving_average,
    plot_summary_curves,
    save_figure,
)

__all__ = ["plot_adaptation", "plot_returns"]


def _reference_lines(ax: Any, references: Mapping[str, float], tasks: int | None = None) -> None:
    """The random and optimal policies' mean returns, over the ``tasks`` held-out tasks the
    plotted returns were measured on (the figures of one run may use different sets: the
    periodic evaluation's ``--test-tasks`` and the final evaluation's ``--eval-tasks``)."""
    over = "" if tasks is None else f", mean over the {tasks} tasks"
    for name, style in (("optimal", ":"), ("random", "--")):
        if name in references:
            ax.axhline(
                references[name],
                color="grey",
                linestyle=style,
                label=f"{name} policy ({references[name]:.2f}{over})",
            )


def plot_returns(
    path: Path,
    rows: Sequence[Mapping[str, Any]],
    references: Mapping[str, float],
    algo: str,
    max_entropy: float | None = None,
    family: str = "mdp",
    reference_tasks: int | None = None,
) -> Path:
    """Train and test return before and after adaptation against the meta-iteration, and below
    them the entropy of the policy before adaptation (a collapse of exploration shows there).

    Training returns (every iteration, a moving average) are lines; held-out returns (every
    ``eval_every`` iterations) are points with their 95% confidence intervals. The random and
    optimal policies' expected returns on the held-out tasks are horizontal lines; so is the
    uniform policy's entropy ``max_entropy`` (ln A) when given. ``reference_tasks``: how many
    held-out tasks the references average over (said in the legend).
    """
    entropy = [r for r in rows if r.get("train_pre_entropy") is not None]
    if entropy:
        fig, (ax, below) = plt.subplots(
            2, 1, figsize=(7.5, 6.5), sharex=True, gridspec_kw={"height_ratios": [3, 1.2]}
        )
        window = max(1, len(entropy) // 50)
        # The entropy often stays near the uniform policy's: the curve is drawn thick, in
        # colour and above the reference, which is thin, black and dotted.
        below.plot(
            [r["iteration"] for r in entropy],
            moving_average([r["train_pre_entropy"] for r in entropy], window),
            color="tab:green",
            linewidth=2.2,
            zorder=3,
            label=f"policy entropy before adaptation (avg of {window})",
        )
        if max_entropy is not None:
            below.axhline(
                max_entropy,
                color="black",
                linestyle=(0, (1, 2)),
                linewidth=1,
                zorder=2,
                label=f"uniform policy, the highest possible ({max_entropy:.2f})",
            )
            below.set_ylim(top=1.25 * max_entropy)  # the reference off the frame's edge
        below.set_ylim(bottom=0)
        integer_ticks(below.xaxis)
        below.set_ylabel("entropy (nats)")
        below.set_xlabel("meta-iteration")
        below.legend(fontsize=8, loc="lower left")
        below.grid(alpha=0.3)
    else:
        fig, ax = plt.subplots(figsize=(7.5, 4.5))
    train = [r for r in rows if "train_pre_return" in r]
    if train:
        window = max(1, len(train) // 50)
        iterations = [r["iteration"] for r in train]
        for key, label, color in (
            ("train_pre_return", "train, before adaptation", "tab:blue"),
            ("train_post_return", "train, after adaptation", "tab:orange"),
        ):
            values = moving_average([r[key] for r in train], window)
            ax.plot(iterations, values, color=color, alpha=0.6, label=f"{label} (avg of {window})")
    test = [r for r in rows if "test_pre_return" in r]
    for key, label, color in (
        ("test_pre_return", "test, before adaptation", "tab:blue"),
        ("test_post_return", "test, after adaptation", "tab:orange"),
    ):
        if test:
            ax.errorbar(
                [r["iteration"] for r in test],
                [r[key] for r in test],
                yerr=[r[key + "_ci95"] for r in test],
                fmt="o",
                color=color,
                markeredgecolor="black",
                capsize=3,
                label=label + " (95% CI)",
            )
    _reference_lines(ax, references, reference_tasks)
    if not entropy:
        ax.set_xlabel("meta-iteration")
    integer_ticks(ax.xaxis)
    ax.set_ylabel("episode return (undiscounted)")
    ax.set_title(f"{family} / {algo}: returns before and after adaptation")
    ax.legend(fontsize=8, loc="center right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path, dpi=120)  # atomically: a kill leaves no half PNG
    return Path(path)


def plot_adaptation(
    path: Path, evaluation: Mapping[str, Any], algo: str, family: str = "mdp"
) -> Path:
    """Held-out return after k inner steps (meta-learned and baselines), with 95% CIs, and the
    step count the model was meta-trained for (``trained_steps``) marked. Where some tasks
    diverged a step has no point: the line stops and a cross with the count marks it
    (`metaopt.training.plots.plot_summary_curve`)."""
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    curves = [("meta-learned", evaluation.get("by_steps", {}), "tab:orange")]
    baseline = evaluation.get("baseline", {}).get("by_steps")
    random_start = evaluation.get("random_baseline", {}).get("by_steps")
    if baseline:
        name = "pretrained policy" if random_start else "initial policy"
        curves.append((f"{name} + SGD (baseline)", baseline, "tab:green"))
    if random_start:
        curves.append(("random initialisation + SGD", random_start, "tab:purple"))
    tasks = evaluation.get("tasks")
    diverged = plot_summary_curves(ax, curves, tasks=tasks, higher_is_better=True, errorbars=True)
    all_steps = [int(k) for _, by_steps, _ in curves for k in by_steps]
    if all_steps:
        ax.set_xlim(min(all_steps) - 0.5, max(all_steps) + 0.5)
    integer_ticks(ax.xaxis)
    if evaluation.get("trained_steps") is not None:
        mark_trained_steps(ax, int(evaluation["trained_steps"]))
    references = {
        name: evaluation[name]["mean"] for name in ("random", "optimal") if name in evaluation
    }
    _reference_lines(ax, references, evaluation.get("tasks"))
    ax.set_xlabel("inner steps on the held-out task")
    ax.set_ylabel("episode return")
    ax.set_title(f"{family} / {algo}: return after adaptation ({evaluation.get('tasks')} tasks)")
    add_legend(ax, diverged > 0, fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path, dpi=120)  # atomically: a kill leaves no half PNG
    return Path(path)
