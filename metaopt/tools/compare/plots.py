"""The report's figures: cosine against inner steps, and the learning curves."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from metaopt.tools.compare.options import COLORS, HELDOUT_KEY, LABELS, gradient_rows
from metaopt.tools.compare.report import point_label, rows_of

__all__ = ["plot_cosines", "plot_curves"]


def plot_cosines(path: Path, results: Mapping[str, Any]) -> Path:
    """Cosine and norm ratio against inner steps, one colour per method, one style per point."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.ticker import NullFormatter, NullLocator

    fig, (ax_cos, ax_ratio) = plt.subplots(1, 2, figsize=(11, 4.6))
    styles: list[Any] = ["-", "--", "-.", ":"]
    points = results["points"]
    methods = gradient_rows(results["methods"])
    for method in methods:
        for p_index, iteration in enumerate(points):
            rows = rows_of(results, method, iteration)
            xs = [r["steps"] for r in rows]
            look: dict[str, Any] = {
                "linestyle": styles[p_index % len(styles)],
                "marker": "o",
                "color": COLORS[method],
                "alpha": max(0.35, 1.0 - 0.2 * p_index),
            }
            ax_cos.plot(xs, [r["cosine"] for r in rows], **look)
            ax_ratio.plot(xs, [r["norm_ratio"] for r in rows], **look)
    # Every row but Meta-SGD's rates is against second-order MAML; that one against second-order
    # Meta-SGD (its legend says so), hence "the second-order meta-gradient".
    labels = ("cosine with the second-order meta-gradient", "‖g‖ / ‖g_second-order‖")
    for ax, ylabel in zip((ax_cos, ax_ratio), labels, strict=True):
        ax.set_xscale("log")
        ax.xaxis.set_minor_locator(NullLocator())
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xticks(results["options"]["steps"], [str(s) for s in results["options"]["steps"]])
        ax.set_xlabel("inner steps")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    ax_ratio.set_yscale("log")
    ax_cos.axhline(1.0, color="k", lw=0.5)
    handles = [Line2D([], [], color=COLORS[m], marker="o", label=LABELS[m]) for m in methods]
    handles += [
        Line2D([], [], color="k", linestyle=styles[i % len(styles)], label=point_label(iteration))
        for i, iteration in enumerate(points)
    ]
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 8), fontsize=8)
    fig.suptitle(f"{results['family']}: meta-gradients against second-order MAML")
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_curves(report: Path, results: Mapping[str, Any]) -> list[Path]:
    """Held-out curves against iterations and against training seconds (two PNG files)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from metaopt.training.plots import integer_ticks

    key = results.get("family_curve_key")
    keys = ([key] if key else []) + [HELDOUT_KEY]  # the family's own number first
    paths = []
    for x_key, name, xlabel in (
        ("iteration", "curves_iterations.png", "meta-iteration"),
        ("train_seconds", "curves_time.png", "training wall-clock seconds"),
    ):
        fig, axes = plt.subplots(1, len(keys), figsize=(5.5 * len(keys), 4.0), squeeze=False)
        for ax, y_key in zip(axes[0], keys, strict=True):
            for method in results["methods"]:
                curve = results["curves"].get(method)
                if curve is None:
                    continue
                points = [p for p in curve["points"] if p.get(y_key) is not None]
                ax.plot(
                    [p[x_key] for p in points],
                    [p[y_key] for p in points],
                    marker=".",
                    color=COLORS[method],
                    label=LABELS[method],
                )
            values = [
                abs(p[y_key])
                for c in results["curves"].values()
                for p in c["points"]
                if p.get(y_key)
            ]
            if values and max(values) > 100 * max(min(values), 1e-12):
                ax.set_yscale("symlog", linthresh=max(min(values), 1e-3))  # spans decades
            if x_key == "iteration":
                integer_ticks(ax.xaxis)
            ax.set_xlabel(xlabel)
            ax.set_ylabel(y_key.replace("_", " "))
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        fig.suptitle(f"{results['family']}: held-out, after adaptation")
        fig.tight_layout()
        path = report / name
        fig.savefig(path, dpi=120)
        plt.close(fig)
        paths.append(path)
    return paths
