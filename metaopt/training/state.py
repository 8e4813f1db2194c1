"""A run's state: what the loop carries from one iteration to the next, and what a checkpoint holds.

A checkpoint holds everything the loop's future depends on (parameters, learned rates, outer
optimiser and schedule, iteration, config and every random-number state), so that
[`resume`][metaopt.training.resume] continues a run bit for bit (docs/reliability.md).
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch

from metaopt.algorithms import MetaLearner
from metaopt.training import distributed
from metaopt.training.checkpoint import save_checkpoint
from metaopt.training.family import TaskFamily, TrainConfig
from metaopt.training.hooks import TrainingHooks
from metaopt.training.rundir import CHECKPOINT, package_versions

__all__ = [
    "Best",
    "ResumeWarning",
    "Run",
    "algorithm_state",
    "load_algorithm_state",
    "random_state",
    "restore_random_state",
    "save",
]


class ResumeWarning(UserWarning):
    """A resumed run may not continue bit for bit (other package versions or thread count)."""


def algorithm_state(algo: MetaLearner) -> dict[str, Any]:
    """The model's parameters and buffers and whatever the algorithm learns besides (Meta-SGD's
    rates)."""
    return {"model": algo.model.state_dict(), **algo.learned_state()}


def load_algorithm_state(algo: MetaLearner, state: dict[str, Any]) -> None:
    algo.model.load_state_dict(state["model"])
    algo.load_learned_state(state)


def random_state(rng: np.random.Generator) -> dict[str, Any]:
    """Every random-number state in play: the loop's Generator (the task samplers draw only from
    it), Python's ``random``, numpy's global generator, torch's CPU and CUDA generators.

    The result holds only tensors, numbers, strings and containers, so it goes into a checkpoint
    that ``torch.load(weights_only=True)`` reads.
    """
    legacy = np.random.get_state(legacy=False)  # noqa: NPY002
    legacy["state"] = {**legacy["state"], "key": legacy["state"]["key"].tolist()}
    return {
        "loop": rng.bit_generator.state,
        "python": random.getstate(),
        "numpy": legacy,
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def restore_random_state(rng: np.random.Generator, state: Mapping[str, Any]) -> None:
    """Put back what `random_state` captured (``rng`` is set in place)."""
    rng.bit_generator.state = state["loop"]
    version_, internal, gauss = state["python"]
    random.setstate((version_, tuple(internal), gauss))
    legacy = dict(state["numpy"])
    legacy["state"] = {**legacy["state"], "key": np.asarray(legacy["state"]["key"], np.uint32)}
    np.random.set_state(legacy)  # noqa: NPY002
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda")
    if cuda is not None:
        if torch.cuda.is_available() and torch.cuda.device_count() == len(cuda):
            torch.cuda.set_rng_state_all(cuda)
        else:
            warnings.warn(
                f"the checkpoint holds the state of {len(cuda)} CUDA generator(s) but this "
                f"machine has {torch.cuda.device_count() if torch.cuda.is_available() else 0}; "
                "they are not restored",
                ResumeWarning,
                stacklevel=2,
            )


@dataclasses.dataclass(frozen=True)
class Best:
    """The best validation score of a run so far, and the algorithm's state when it was reached
    (`metaopt.training.selection`); every checkpoint carries it, so that a resumed run goes on
    selecting among the same candidates.

    Attributes:
        iteration: the iteration whose parameters scored ``value``.
        metric: the key of the metrics row that selects (``TaskFamily.selection_metric``).
        value: the validation score at ``iteration``.
        algorithm: `algorithm_state` at ``iteration`` (a copy, not the live tensors).
    """

    iteration: int
    metric: str
    value: float
    algorithm: dict[str, Any]

    def summary(self) -> dict[str, Any]:
        """Iteration, metric and value: what metrics rows, ``best.pt`` and eval.json say of it."""
        return {"iteration": self.iteration, "metric": self.metric, "value": self.value}

    def record(self) -> dict[str, Any]:
        """What a checkpoint holds: `summary` and the algorithm's state."""
        return {**self.summary(), "algorithm": self.algorithm}

    @classmethod
    def from_record(cls, record: Mapping[str, Any] | None) -> Best | None:
        """The `Best` a checkpoint's `record` holds (``None``: none, or a checkpoint written
        before runs kept one)."""
        if record is None:
            return None
        return cls(
            int(record["iteration"]),
            str(record["metric"]),
            float(record["value"]),
            record["algorithm"],
        )


@dataclasses.dataclass
class Run:
    """Everything the training loop carries from one iteration to the next."""

    family: TaskFamily
    config: TrainConfig
    run_dir: Path
    algo: MetaLearner
    outer: torch.optim.Optimizer
    schedule: torch.optim.lr_scheduler.LRScheduler | None
    rng: np.random.Generator
    iteration: int = 0
    skipped: int = 0
    #: meta-batches whose outer step the algorithm dropped (iMAML's on_solve_failure="skip")
    solve_skipped: int = 0
    seconds: float = 0.0
    #: iteration of the latest checkpoint on disk (None: none yet)
    saved: int | None = None
    #: the best validation score so far and its parameters (None: none yet, or a family that
    #: selects no checkpoint)
    best: Best | None = None
    versions: dict[str, str] = dataclasses.field(default_factory=package_versions)
    #: this process's place under torchrun (one process: rank 0 of 1)
    dist: distributed.DistInfo = dataclasses.field(default_factory=distributed.DistInfo)
    hooks: Sequence[TrainingHooks] = ()
    #: where the model, the tasks and the optimiser's state live (`metaopt.training.device`)
    device: torch.device = dataclasses.field(default_factory=lambda: torch.device("cpu"))
    #: fp16's gradient scaler (None for fp32 and bf16)
    scaler: torch.amp.GradScaler | None = None

    @property
    def checkpoint(self) -> Path:
        return self.run_dir / CHECKPOINT


def save(run: Run, randomness: dict[str, Any] | None = None, *, log: IO[str] | None = None) -> Path:
    """Checkpoint ``run`` at ``run.iteration``; ``randomness`` defaults to the current states.

    Under torchrun rank 0 alone writes (every rank holds the same state).
    """
    if not run.dist.is_main:
        run.saved = run.iteration
        return run.checkpoint
    if log is not None:  # the metrics of a checkpointed iteration are on disk before it is
        log.flush()
        os.fsync(log.fileno())
    save_checkpoint(
        run.checkpoint,
        {
            "family": run.family.name,
            "config": json.dumps(run.config.to_dict()),
            "iteration": run.iteration,
            "algorithm": algorithm_state(run.algo),
            "outer": run.outer.state_dict(),
            "schedule": run.schedule.state_dict() if run.schedule is not None else None,
            "random": randomness if randomness is not None else random_state(run.rng),
            "skipped": run.skipped,
            "solve_skipped": run.solve_skipped,
            "seconds": run.seconds,
            "best": run.best.record() if run.best is not None else None,
            "versions": run.versions,
            "threads": torch.get_num_threads(),
            "device": str(run.device),  # a record: the run may resume on another
            "scaler": run.scaler.state_dict() if run.scaler is not None else None,
        },
        keep_previous=True,
    )
    run.saved = run.iteration
    return run.checkpoint
