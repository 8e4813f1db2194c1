"""The 2-D navigation picture of a ``nav2d`` run (``nav2d_trajectories.png``)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from metaopt.training.plots import save_figure

__all__ = ["plot_nav2d"]


def plot_nav2d(path: Path, data: Mapping[str, Any]) -> Path:
    """MAML's 2-D navigation picture: one row per policy (meta-learned, pretrained, random
    initialisation), one column per held-out goal, the mean-action path from the origin before
    adaptation and after each number of inner steps, the goal marked.

    Args:
        data: ``{"goals": [G, 2], "paths": {policy: {steps: [G, H + 1, 2]}}}``
            (`rl.nav2d.family.Nav2DFamily.trajectories`).
    """
    goals, paths = data["goals"], data["paths"]
    rows, cols = len(paths), len(goals)
    fig, axes = plt.subplots(rows, cols, figsize=(3.0 * cols, 3.0 * rows), squeeze=False)
    colors = ("tab:blue", "tab:orange", "tab:green", "tab:red")
    for r, (policy, by_steps) in enumerate(paths.items()):
        for c, goal in enumerate(goals):
            ax = axes[r][c]
            for (k, path_k), color in zip(by_steps.items(), colors, strict=False):
                label = "pre-update" if k == 0 else f"{k} grad step{'s' if k > 1 else ''}"
                ax.plot(path_k[c, :, 0], path_k[c, :, 1], color=color, lw=1.2, label=label)
            ax.plot(0, 0, "k.", ms=6)
            ax.plot(goal[0], goal[1], "r*", ms=12, label="goal")
            ax.set_xlim(-0.6, 0.6)
            ax.set_ylim(-0.6, 0.6)
            ax.set_aspect("equal")
            ax.grid(alpha=0.3)
            if c == 0:
                ax.set_ylabel(policy)
            if r == 0:
                ax.set_title(f"goal ({goal[0]:+.2f}, {goal[1]:+.2f})", fontsize=9)
    axes[0][0].legend(fontsize=7, loc="lower left")
    fig.suptitle("2-D navigation: mean-action paths before and after adaptation")
    fig.tight_layout()
    save_figure(fig, path, dpi=110)  # atomically: a kill leaves no half PNG
    return Path(path)
