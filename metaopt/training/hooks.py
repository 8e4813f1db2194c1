"""Hooks: how tools and users watch a training run without wrapping its family.

The loop ([`metaopt.training.train`][metaopt.training.train]) calls each hook at fixed points of an
iteration, in the order the hooks were given. Time spent in hooks and in the periodic evaluation is
kept out of the run's clock (``seconds`` in ``metrics.jsonl``), so a hook that evaluates does not
slow the curve it records.

>>> class Snapshots(TrainingHooks):
...     def on_iteration_start(self, iteration, algo):
...         print("theta after", iteration - 1, "iterations")
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from metaopt.algorithms import MetaLearner
from metaopt.training.family import TrainConfig


class TrainingHooks:
    """Called by the training loop; override the methods you need (each does nothing here)."""

    def on_train_start(self, run_dir: Path, config: TrainConfig, iteration: int) -> None:
        """Before the first iteration this process trains: ``iteration`` is the one the run
        stands at (0 for a new run, the checkpoint's on resume). Called on every rank."""

    def on_iteration_start(self, iteration: int, algo: MetaLearner) -> None:
        """Before iteration ``iteration`` draws its tasks: the meta-parameters are those after
        ``iteration - 1`` outer steps."""

    def on_evaluation(
        self, iteration: int, algo: MetaLearner, config: TrainConfig
    ) -> Mapping[str, float]:
        """At the periodic evaluation (every ``eval_every`` iterations), after the family's own;
        the values returned join that iteration's row in ``metrics.jsonl``."""
        return {}

    def on_iteration_end(self, iteration: int, row: Mapping[str, Any]) -> None:
        """After ``iteration``'s row is written (before a checkpoint, if one is due)."""

    def on_train_end(self, algo: MetaLearner, config: TrainConfig) -> None:
        """After the last iteration, before the final evaluation."""

    def on_run_end(self, run_dir: Path, evaluation: Mapping[str, Any]) -> None:
        """After the final evaluation, once ``eval.json`` and the plots are written (rank 0)."""
