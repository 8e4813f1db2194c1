"""Continuing a run from a checkpoint, as if it had never stopped, and the checks that make it safe.

:func:`resume` refuses a checkpoint of another family or config (naming the field that differs) and
flags that would change the run's trajectory; it warns (:class:`~metaopt.training.ResumeWarning`)
when other package versions or another thread count may change the last bits. ``metrics.jsonl``
is cut back to the checkpoint's iteration, so the rows logged after it are written again.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from metaopt.training import distributed
from metaopt.training.build import apply_threads, build_algorithm, build_outer_optimizer
from metaopt.training.checkpoint import (
    CheckpointError,
    atomic_write_bytes,
    load_checkpoint,
    previous_path,
)
from metaopt.training.config import load_config
from metaopt.training.family import ConfigError, TaskFamily, TrainConfig, flag
from metaopt.training.hooks import TrainingHooks
from metaopt.training.loop import check_ranks, fit
from metaopt.training.registry import get_family
from metaopt.training.rundir import (
    ABANDONED,
    CHECKPOINT,
    package_versions,
    read_run,
    write_json_atomic,
)
from metaopt.training.state import (
    ResumeWarning,
    Run,
    load_algorithm_state,
    restore_random_state,
)

__all__ = ["resume"]


def resume(
    run_dir: Path | str,
    *,
    family: TaskFamily | None = None,
    overrides: Mapping[str, Any] | None = None,
    checkpoint: str | Path | None = None,
    progress: bool | None = None,
    hooks: Sequence[TrainingHooks] = (),
) -> Path:
    """Continue the run in ``run_dir`` from its latest checkpoint, as if it had never stopped.

    The family and config come from ``run_dir/config.json``. Parameters, learned rates, outer
    optimiser, schedule, iteration, skip count and every random-number state come from the
    checkpoint, and ``metrics.jsonl`` is cut back to the checkpoint's iteration, so the finished
    run's parameters and metrics (but the wall-clock ``seconds``) equal an uninterrupted run's.

    Args:
        run_dir: A directory written by :func:`~metaopt.training.train`.
        family: The family (default: the one named in ``config.json``); must match it.
        overrides: Config values given again (e.g. command-line flags). Equal values are fine;
            only the fields in ``TrainConfig.RESUMABLE`` may change (``iterations`` to extend a
            run, unless ``anneal``); anything else is refused, naming the field.
        checkpoint: The checkpoint file to continue from, relative to ``run_dir`` (default
            ``checkpoint.pt``; ``checkpoint.prev.pt`` is the one before it). Continuing from an
            older checkpoint moves ``checkpoint.pt`` to ``checkpoint.abandoned.pt``.
        progress, hooks: As in :func:`~metaopt.training.train`.

    Raises:
        ConfigError: not a run directory, another family, a flag that may not change, a
            checkpoint of another run or format version, or a damaged checkpoint (the message
            offers the previous one when it is intact).
    """
    run_dir = Path(run_dir)
    saved = read_run(run_dir)
    if family is None:
        family = get_family(saved["family"])
    elif family.name != saved["family"]:
        raise ConfigError(
            f"RUN_DIR {str(run_dir)!r} is a run of family {saved['family']!r}, not {family.name!r}"
        )
    config = _resumed_config(family, load_config(family, run_dir / "config.json"), overrides or {})
    family.validate(config)
    path = Path(checkpoint) if checkpoint is not None else Path(CHECKPOINT)
    path = path if path.is_absolute() else run_dir / path
    state = _load_for_resume(path, run_dir, family.name)
    _check_checkpoint(family, config, state, path)
    iteration = int(state["iteration"])
    if iteration > config.iterations:
        raise ConfigError(
            f"--iterations {config.iterations} is less than the checkpoint's iteration {iteration}"
        )

    info = distributed.setup(config.dist_backend, config.dist_timeout)
    try:
        check_ranks(config, info)
        apply_threads(config)
        torch.manual_seed(config.seed)
        algo = build_algorithm(config, family.make_model(config))
        outer, schedule = build_outer_optimizer(config, algo)
        try:
            load_algorithm_state(algo, state["algorithm"])
            outer.load_state_dict(state["outer"])
            if schedule is not None:
                schedule.load_state_dict(state["schedule"])
        except (RuntimeError, ValueError, KeyError, TypeError) as error:
            raise ConfigError(f"checkpoint {path} does not fit the run's model: {error}") from None
        rng = np.random.default_rng(config.seed)
        restore_random_state(rng, state["random"])
        latest = run_dir / CHECKPOINT
        from_latest = path.resolve() == latest.resolve()

        def rewrite_run_dir() -> None:
            if not from_latest and latest.exists():
                os.replace(latest, run_dir / ABANDONED)  # never rotate it into checkpoint.prev.pt
            _cut_metrics(run_dir / "metrics.jsonl", iteration)
            saved["config"] = config.to_dict()
            saved.setdefault("resumed", []).append(
                {
                    "from_iteration": iteration,
                    "checkpoint": path.name,
                    "command": sys.argv,
                    "versions": package_versions(),
                    "threads": torch.get_num_threads(),
                    "world_size": info.world_size,
                }
            )
            write_json_atomic(run_dir / "config.json", saved)

        distributed.on_main(rewrite_run_dir, info)
        run = Run(
            family,
            config,
            run_dir,
            algo,
            outer,
            schedule,
            rng,
            iteration=iteration,
            skipped=int(state["skipped"]),
            seconds=float(state["seconds"]),
            saved=iteration if from_latest else None,
            dist=info,
            hooks=hooks,
        )
        return fit(run, progress)
    finally:
        distributed.teardown(info)


def _resumed_config(
    family: TaskFamily, config: TrainConfig, overrides: Mapping[str, Any]
) -> TrainConfig:
    """``config`` with the flags given alongside ``--resume``: equal, or a harmless change."""
    names = {f.name for f in dataclasses.fields(config)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise ConfigError(f"{family.name}: unknown option(s) {', '.join(unknown)}")
    allowed = type(config).RESUMABLE
    changes: dict[str, Any] = {}
    for name, value in overrides.items():
        if name == "out":
            raise ConfigError(
                "--out cannot be combined with --resume: a resumed run continues in RUN_DIR"
            )
        current = getattr(config, name)
        if value == current:
            continue
        if name not in allowed:
            raise ConfigError(
                f"{flag(name)} {value!r} differs from the run's {current!r}: a resumed run keeps "
                f"the configuration it started with (flags that may change: "
                f"{', '.join(map(flag, allowed))})"
            )
        if name == "iterations" and config.anneal:
            raise ConfigError(
                f"--iterations {value!r} differs from the run's {current!r}: with --anneal the "
                "outer learning-rate schedule is built for the run's iterations, so they are fixed"
            )
        changes[name] = value
    if not changes:
        return config
    resumed = dataclasses.replace(config, **changes)
    resumed.validate()
    return resumed


def _load_for_resume(path: Path, run_dir: Path, family: str) -> dict[str, Any]:
    """The checkpoint at ``path``, or a ConfigError that offers the previous one."""
    try:
        return load_checkpoint(path)
    except (FileNotFoundError, CheckpointError) as error:
        problem = f"{path} does not exist" if isinstance(error, FileNotFoundError) else str(error)
    offer = ""
    previous = previous_path(run_dir / CHECKPOINT)
    if path.resolve() != previous.resolve() and previous.is_file():
        try:
            older = load_checkpoint(previous)
            offer = (
                f"; the previous checkpoint {previous.name} (iteration {older['iteration']}) is "
                f"intact: continue from it with metaopt train {family} --resume {run_dir} "
                f"--checkpoint {previous.name}"
            )
        except CheckpointError as error:
            offer = f"; the previous checkpoint is damaged too ({error})"
    raise ConfigError(f"cannot resume: {problem}{offer}")


def _check_checkpoint(
    family: TaskFamily, config: TrainConfig, state: Mapping[str, Any], path: Path
) -> None:
    """Refuse a checkpoint of another family or config, naming the field that differs."""
    if state.get("family") != family.name:
        raise ConfigError(
            f"checkpoint {path} is of family {state.get('family')!r}, the run is {family.name!r}"
        )
    theirs = json.loads(state["config"])
    ours = json.loads(json.dumps(config.to_dict()))
    ignored = set(type(config).RESUMABLE) | {"out"}
    if config.anneal:
        ignored.discard("iterations")
    defaults = {f.name: f.default for f in dataclasses.fields(config)}
    for name in sorted(set(theirs) | set(ours)):
        if name in ignored:
            continue
        if name not in ours:
            raise ConfigError(
                f"checkpoint {path} has a field {name!r} that family {family.name!r} does not "
                "know: it was written by another version of the family"
            )
        if name not in theirs and ours[name] == defaults[name]:
            continue  # a field added since, at the default that reproduces the old behaviour
        if name not in theirs:
            raise ConfigError(
                f"checkpoint {path} has no field {name!r}: it was written by another version "
                f"of family {family.name!r}"
            )
        if theirs[name] != ours[name]:
            raise ConfigError(
                f"checkpoint {path} was written with {flag(name)} {theirs[name]!r} but the run's "
                f"config.json has {ours[name]!r}: it belongs to another run"
            )
    # The threads this process will train with: apply_threads sets them after these checks.
    _warn_if_environment_differs(state, config.threads or torch.get_num_threads())


def _warn_if_environment_differs(state: Mapping[str, Any], threads: int) -> None:
    """A :class:`ResumeWarning` for each package version or thread count unlike the checkpoint's."""
    mine, theirs = package_versions(), state.get("versions", {})
    for package in ("metaopt", "torch", "torchopt", "numpy"):
        if theirs.get(package) != mine.get(package):
            warnings.warn(
                f"the checkpoint was written with {package} {theirs.get(package)}, "
                f"this is {mine.get(package)}: the continuation may differ from an uninterrupted "
                "run in the last bits",
                ResumeWarning,
                stacklevel=4,
            )
    if state.get("threads") != threads:
        warnings.warn(
            f"the checkpoint was written with {state['threads']} torch threads, this process "
            f"trains with {threads}: the continuation may differ from an uninterrupted run "
            "in the last bits (torch.set_num_threads or OMP_NUM_THREADS sets it)",
            ResumeWarning,
            stacklevel=4,
        )


def _cut_metrics(path: Path, iteration: int) -> None:
    """Cut ``metrics.jsonl`` after ``iteration`` (rows logged after the checkpoint)."""
    rows: list[dict[str, Any]] = []
    lines: list[str] = []
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
            except ValueError:  # a row cut short by a crash: nothing after it counts
                break
            if not isinstance(row, dict) or row.get("iteration", 0) > iteration:
                break
            rows.append(row)
            lines.append(line)
    atomic_write_bytes(path, "".join(line + "\n" for line in lines).encode())
    last = rows[-1]["iteration"] if rows else 0
    if last != iteration:
        warnings.warn(
            f"{path} ends at iteration {last} but the checkpoint is at iteration {iteration}; "
            "the rows in between were lost and stay missing",
            ResumeWarning,
            stacklevel=3,
        )
