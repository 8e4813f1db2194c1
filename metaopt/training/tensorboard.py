"""TensorBoard event files beside ``metrics.jsonl`` (``metaopt train ... --tensorboard``).

[`TensorBoardHooks`][metaopt.training.TensorBoardHooks] writes, into the run directory itself (so
``tensorboard --logdir runs`` shows one run per directory):

* every number of each ``metrics.jsonl`` row under the row's own key, at step ``iteration``
  (a value the row holds as ``null``, i.e. not finite, is written as NaN);
* the final evaluation's numbers under ``eval/<path in eval.json>``: a ``by_steps`` table becomes
  a curve whose TensorBoard step is the number of *adaptation* steps
  (``eval/by_steps/mean``, ``eval/baseline/by_steps/mean``, ...); other numbers are written at the
  run's last iteration; eval.json itself as text;
* every PNG of the run directory as an image (``training_curve``, ``mse_vs_steps``, ...).

On resume the writer drops the events past the checkpoint's iteration (TensorBoard's
``purge_step``), as [`resume`][metaopt.training.resume] cuts ``metrics.jsonl`` back. It needs the
``tensorboard`` package: ``pip install metaopt[tensorboard]``.

An event file grows by appending, so a kill would leave its last record cut. The writer therefore
writes into a private staging folder and publishes each event file into the run directory
atomically (a complete copy, renamed into place; `metaopt.training.checkpoint.atomic_write_bytes`)
at most every `PUBLISH_SECONDS` and at the end: the run directory holds complete event files only,
at most that many seconds behind.
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from metaopt.training.checkpoint import atomic_write_bytes
from metaopt.training.family import ConfigError, TrainConfig
from metaopt.training.hooks import TrainingHooks

__all__ = ["PUBLISH_SECONDS", "TensorBoardHooks", "evaluation_scalars"]

#: Longest time between two publications of the event files into the run directory.
PUBLISH_SECONDS = 10.0


def evaluation_scalars(
    evaluation: Mapping[str, Any], step: int, prefix: str = "eval"
) -> Iterator[tuple[str, float, int]]:
    """``(tag, value, step)`` for every number in ``evaluation`` (see the module docstring)."""
    for key, value in evaluation.items():
        tag = f"{prefix}/{key}"
        if key == "by_steps" and isinstance(value, Mapping):
            for steps, summary in value.items():
                if isinstance(summary, Mapping):
                    for name, number in _numbers(summary, tag):
                        yield name, number, int(steps)
        elif isinstance(value, Mapping):
            yield from evaluation_scalars(value, step, tag)
        elif isinstance(value, int | float) and not isinstance(value, bool):
            yield tag, float(value), step


def _numbers(summary: Mapping[str, Any], prefix: str) -> Iterator[tuple[str, float]]:
    for key, value in summary.items():
        if isinstance(value, Mapping):
            yield from _numbers(value, f"{prefix}/{key}")
        elif isinstance(value, int | float) and not isinstance(value, bool):
            yield f"{prefix}/{key}", float(value)


class TensorBoardHooks(TrainingHooks):
    """Write a run's scalars, evaluation and plots as TensorBoard events in its run directory.

    Raises:
        ConfigError: the ``tensorboard`` package is not installed (at construction, before
            training starts).
    """

    def __init__(self) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ConfigError(
                "--tensorboard needs the tensorboard package: pip install 'metaopt[tensorboard]'"
            ) from None
        self._writer_class = SummaryWriter
        self._writer: Any = None
        self._iteration = 0
        self._run_dir = Path()
        self._staging: Path | None = None
        self._published = 0.0

    def on_train_start(self, run_dir: Path, config: TrainConfig, iteration: int) -> None:
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        if distributed and torch.distributed.get_rank() != 0:
            return  # rank 0 writes the run directory
        self._iteration = iteration
        self._run_dir = Path(run_dir)
        self._staging = Path(tempfile.mkdtemp(prefix="metaopt-tensorboard-"))
        self._writer = self._writer_class(log_dir=str(self._staging), purge_step=iteration + 1)
        self._published = time.monotonic()

    def _publish(self) -> None:
        """Copy every staged event file, complete, into the run directory (atomically)."""
        assert self._staging is not None
        self._writer.flush()
        for events in sorted(self._staging.iterdir()):
            atomic_write_bytes(self._run_dir / events.name, events.read_bytes())
        self._published = time.monotonic()

    def on_iteration_end(self, iteration: int, row: Mapping[str, Any]) -> None:
        if self._writer is None:
            return
        self._iteration = iteration
        for key, value in row.items():
            if key != "iteration" and (value is None or isinstance(value, int | float)):
                self._writer.add_scalar(key, math.nan if value is None else value, iteration)
        if time.monotonic() - self._published >= PUBLISH_SECONDS:
            self._publish()

    def on_run_end(self, run_dir: Path, evaluation: Mapping[str, Any]) -> None:
        if self._writer is None:
            return
        from PIL import Image

        for tag, value, step in evaluation_scalars(evaluation, self._iteration):
            self._writer.add_scalar(tag, value, step)
        self._writer.add_text("eval.json", f"```\n{json.dumps(evaluation, indent=1)}\n```")
        for png in sorted(Path(run_dir).glob("*.png")):
            with Image.open(png) as image:
                pixels = np.asarray(image.convert("RGB"))
            self._writer.add_image(png.stem, pixels, self._iteration, dataformats="HWC")
        self._publish()
        self._writer.close()
        self._writer = None
        if self._staging is not None:
            shutil.rmtree(self._staging, ignore_errors=True)
            self._staging = None
