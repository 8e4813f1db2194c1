"""The picture of a ``cheetah-vel`` or ``cheetah-dir`` run (``cheetah_velocity.png``)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from metaopt.training.plots import save_figure

__all__ = ["plot_velocities"]


def plot_velocities(path: Path, data: Mapping[str, Any]) -> Path:
    """One row per policy (meta-learned, pretrained, random initialisation), one column per
    held-out goal: the torso's forward velocity over an episode of the mean action, before
    adaptation and after each number of inner steps, the goal marked (the goal velocity, or for
    ``dir`` the direction the reward asks for).

    Args:
        data: ``{"task", "goals": [G], "dt", "velocities": {policy: {steps: [G, H + 1]}}}``
            (`rl.cheetah.family.CheetahVelFamily.velocities`).
    """
    task, goals, curves = data["task"], data["goals"], data["velocities"]
    rows, cols = len(curves), len(goals)
    fig, axes = plt.subplots(
        rows, cols, figsize=(3.4 * cols, 2.4 * rows), squeeze=False, sharex=True, sharey=True
    )
    colors = ("tab:blue", "tab:orange", "tab:green", "tab:red")
    for r, (policy, by_steps) in enumerate(curves.items()):
        for c, goal in enumerate(goals):
            ax = axes[r][c]
            for (k, velocity), color in zip(by_steps.items(), colors, strict=False):
                time = np.arange(velocity.shape[1]) * data["dt"]
                label = "pre-update" if k == 0 else f"{k} grad step{'s' if k > 1 else ''}"
                ax.plot(time, velocity[c], color=color, lw=1.1, label=label)
            if task == "vel":
                ax.axhline(goal, color="k", ls="--", lw=1, label="goal velocity")
                title = f"goal velocity {goal:.2f}"
            else:
                ax.axhline(0.0, color="k", lw=0.6)
                title = "goal: run " + ("forwards" if goal > 0 else "backwards")
            ax.grid(alpha=0.3)
            if c == 0:
                ax.set_ylabel(f"{policy}\nvelocity")
            if r == 0:
                ax.set_title(title, fontsize=9)
            if r == rows - 1:
                ax.set_xlabel("time (s)")
    axes[0][0].legend(fontsize=7, loc="best")
    fig.suptitle(f"HalfCheetah-{task.capitalize()}: forward velocity before and after adaptation")
    fig.tight_layout()
    save_figure(fig, path, dpi=110)  # atomically: a kill leaves no half PNG
    return Path(path)
