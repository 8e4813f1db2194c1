"""Continuing a run from a checkpoint, as if it had never stopped, and the checks that make it safe.

[`resume`][metaopt.training.resume] refuses a checkpoint of another family or config (naming the
field that differs) and flags that would change the run's trajectory; it warns (`ResumeWarning`)
when other package versions or another thread count may change the last bits. ``metrics.jsonl``
is cut back to the checkpoint's iteration, so the rows logged after it are written again; only a
last line cut short by a kill is dropped, any other damaged line stops the resume.
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
from metaopt.training.algorithm_config import config_flag_names, renamed, split_values
from metaopt.training.build import apply_threads, build_algorithm, build_outer_optimizer
from metaopt.training.checkpoint import (
    CheckpointError,
    atomic_write_bytes,
    load_checkpoint,
    previous_path,
    remove_temporaries,
)
from metaopt.training.config import load_config
from metaopt.training.device import grad_scaler, run_device
from metaopt.training.family import ConfigError, TaskFamily, TrainConfig, flag
from metaopt.training.hooks import TrainingHooks
from metaopt.training.lock import lock_run_dir
from metaopt.training.loop import check_ranks, fit, new_run
from metaopt.training.memory import check_memory
from metaopt.training.registry import get_family
from metaopt.training.rundir import (
    ABANDONED,
    CHECKPOINT,
    check_run_dir,
    package_versions,
    read_run,
    write_json_atomic,
)
from metaopt.training.selection import write_best_file
from metaopt.training.state import (
    Best,
    ResumeWarning,
    Run,
    load_algorithm_state,
    restore_random_state,
)

__all__ = ["check_checkpoint", "resume"]


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
    run's parameters and metrics (but the wall-clock ``seconds``) equal an uninterrupted run's;
    ``best.pt`` is written again from the best the checkpoint carries
    (`metaopt.training.selection`). A run killed before its first checkpoint starts again from
    iteration 0, with a `ResumeWarning`: no run directory is a dead end. The directory is
    locked for the whole resume (`metaopt.training.lock`), and the temporary files a killed
    process left there are removed.

    Args:
        run_dir: A directory written by [`train`][metaopt.training.train].
        family: The family (default: the one named in ``config.json``); must match it.
        overrides: Config values given again (e.g. command-line flags). Equal values are fine;
            only the fields in ``TrainConfig.RESUMABLE`` may change (``iterations`` to extend a
            run, unless ``anneal``); anything else is refused, naming the field.
        checkpoint: The checkpoint file to continue from, relative to ``run_dir`` (default
            ``checkpoint.pt``; ``checkpoint.prev.pt`` is the one before it). Continuing from an
            older checkpoint moves ``checkpoint.pt`` to ``checkpoint.abandoned.pt``.
        progress: As in [`train`][metaopt.training.train].
        hooks: As in [`train`][metaopt.training.train].

    Raises:
        ConfigError: not a run directory, another family, a flag that may not change, a
            checkpoint of another run or format version, or a damaged checkpoint (the message
            offers the previous one when it is intact).
    """
    run_dir = check_run_dir(Path(run_dir), "--resume")  # before the lock: not a run, untouched
    with lock_run_dir(run_dir) as lock:
        if lock is not None:  # the owner clears what a killed process left
            remove_temporaries(run_dir)
        return _resume_locked(run_dir, family, overrides or {}, checkpoint, progress, hooks)


def _resume_locked(
    run_dir: Path,
    family: TaskFamily | None,
    overrides: Mapping[str, Any],
    checkpoint: str | Path | None,
    progress: bool | None,
    hooks: Sequence[TrainingHooks],
) -> Path:
    """[`resume`][metaopt.training.resume], in a run directory this process owns."""
    saved = read_run(run_dir)
    if family is None:
        family = get_family(saved["family"])
    elif family.name != saved["family"]:
        raise ConfigError(
            f"RUN_DIR {str(run_dir)!r} is a run of family {saved['family']!r}, not {family.name!r}"
        )
    config = _resumed_config(family, load_config(family, run_dir / "config.json"), overrides)
    family.validate(config)
    check_memory(family, config)
    path = Path(checkpoint) if checkpoint is not None else Path(CHECKPOINT)
    path = path if path.is_absolute() else run_dir / path
    state = (
        None
        if _never_checkpointed(run_dir, checkpoint)
        else _load_for_resume(path, run_dir, family.name)
    )
    if state is None:
        warnings.warn(
            f"{run_dir} has no checkpoint (the run stopped before its first one): training starts "
            "again from iteration 0 with the run's config and seed",
            ResumeWarning,
            stacklevel=3,
        )
        iteration = 0
    else:
        check_checkpoint(family, config, state, path)
        if "outer" not in state:  # best.pt: parameters alone
            raise ConfigError(
                f"cannot resume from {path}: it holds the parameters selected on validation "
                "tasks, without the optimiser and random states a resume needs; continue from "
                f"{CHECKPOINT} (the default) or {previous_path(run_dir / CHECKPOINT).name}"
            )
        iteration = int(state["iteration"])
    if iteration > config.iterations:
        raise ConfigError(
            f"--iterations {config.iterations} is less than the checkpoint's iteration {iteration}"
        )

    device = run_device(config)  # a device this machine lacks is refused before anything changes
    info = distributed.setup(config.dist_backend, config.dist_timeout, device)
    try:
        check_ranks(config, info)
        apply_threads(config)
        if state is None:
            run = new_run(family, config, run_dir, info, hooks)
            from_latest = False
        else:
            run = _restored_run(family, config, run_dir, state, path, info, hooks)
            from_latest = path.resolve() == (run_dir / CHECKPOINT).resolve()
        latest = run_dir / CHECKPOINT

        def rewrite_run_dir() -> None:
            kept = _kept_metrics(run_dir / "metrics.jsonl", iteration)  # refuses before writing
            if state is not None and not from_latest and latest.exists():
                os.replace(latest, run_dir / ABANDONED)  # never rotate it into checkpoint.prev.pt
            atomic_write_bytes(run_dir / "metrics.jsonl", kept.encode())
            saved["config"] = config.to_dict()
            saved.setdefault("resumed", []).append(
                {
                    "from_iteration": iteration,
                    "checkpoint": path.name if state is not None else None,
                    "command": sys.argv,
                    "versions": package_versions(),
                    "threads": torch.get_num_threads(),
                    "world_size": info.world_size,
                    "device": str(run.device),
                }
            )
            write_json_atomic(run_dir / "config.json", saved)
            write_best_file(run)  # the checkpoint's best: a later best.pt goes, as its rows do

        distributed.on_main(rewrite_run_dir, info)
        return fit(run, progress)
    finally:
        distributed.teardown(info)


def _never_checkpointed(run_dir: Path, checkpoint: str | Path | None) -> bool:
    """Whether the run stopped before its first checkpoint: neither checkpoint.pt nor
    checkpoint.prev.pt exists, and no particular checkpoint was asked for."""
    latest = run_dir / CHECKPOINT
    return checkpoint is None and not latest.exists() and not previous_path(latest).exists()


def _restored_run(
    family: TaskFamily,
    config: TrainConfig,
    run_dir: Path,
    state: Mapping[str, Any],
    path: Path,
    info: distributed.DistInfo,
    hooks: Sequence[TrainingHooks],
) -> Run:
    """The run as the checkpoint ``state`` (read from ``path``) left it."""
    torch.manual_seed(config.seed)
    # The model is on the run's device before the checkpoint (read onto the CPU) is copied into
    # it, and the optimiser moves its state to its parameters' device: any device to any other.
    algo = build_algorithm(config, family.make_model(config))
    outer, schedule = build_outer_optimizer(config, algo)
    device = run_device(config)
    scaler = grad_scaler(config, device)
    try:
        load_algorithm_state(algo, state["algorithm"])
        outer.load_state_dict(state["outer"])
        if schedule is not None:
            schedule.load_state_dict(state["schedule"])
        if scaler is not None and state.get("scaler"):  # absent before --precision
            scaler.load_state_dict(state["scaler"])
    except (RuntimeError, ValueError, KeyError, TypeError) as error:
        raise ConfigError(f"checkpoint {path} does not fit the run's model: {error}") from None
    rng = np.random.default_rng(config.seed)
    restore_random_state(rng, state["random"])
    iteration = int(state["iteration"])
    from_latest = path.resolve() == (run_dir / CHECKPOINT).resolve()
    return Run(
        family,
        config,
        run_dir,
        algo,
        outer,
        schedule,
        rng,
        iteration=iteration,
        skipped=int(state["skipped"]),
        solve_skipped=int(state.get("solve_skipped", 0)),  # absent before iMAML's skip policy
        seconds=float(state["seconds"]),
        saved=iteration if from_latest else None,
        best=Best.from_record(state.get("best")),  # absent before runs kept a best checkpoint
        dist=info,
        hooks=hooks,
        device=device,
        scaler=scaler,
    )


def _resumed_config(
    family: TaskFamily, config: TrainConfig, overrides: Mapping[str, Any]
) -> TrainConfig:
    """``config`` with the flags given alongside ``--resume``: equal, or a harmless change."""
    overrides = renamed(type(config), overrides, family.name)
    unknown = sorted(set(overrides) - config_flag_names(type(config)))
    if unknown:
        raise ConfigError(f"{family.name}: unknown option(s) {', '.join(unknown)}")
    run, options = split_values(type(config), config.algo, overrides, set(overrides))
    saved = _flat(config.to_dict())
    allowed = type(config).RESUMABLE
    changes: dict[str, Any] = {}
    for name, value in {**run, **options[config.algo]}.items():
        if name == "out":
            raise ConfigError(
                "--out cannot be combined with --resume: a resumed run continues in RUN_DIR"
            )
        current = saved[name]
        if value == current:
            continue
        if name not in allowed:
            raise ConfigError(
                f"{flag(name)} {value!r} differs from the run's {current!r}: a resumed run keeps "
                f"the configuration it started with (flags that may change: "
                f"{', '.join(map(flag, allowed))})"
            )
        if name == "iterations" and config.schedule != "constant":
            which = "--anneal" if config.anneal else f"--outer-schedule {config.outer_schedule}"
            raise ConfigError(
                f"--iterations {value!r} differs from the run's {current!r}: with {which} the "
                "outer learning-rate schedule is built for the run's iterations, so they are fixed"
            )
        changes[name] = value
    if not changes:
        return config
    resumed = dataclasses.replace(config, **changes)
    resumed.validate()
    return resumed


def _flat(values: Mapping[str, Any]) -> dict[str, Any]:
    """A config's fields and its algorithm's options side by side, as the flags name them."""
    options = values.get("algo_options")
    own = options.get(values.get("algo"), {}) if isinstance(options, Mapping) else {}
    return {**{k: v for k, v in values.items() if k != "algo_options"}, **own}


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


def check_checkpoint(
    family: TaskFamily,
    config: TrainConfig,
    state: Mapping[str, Any],
    path: Path,
    *,
    warn: bool = True,
) -> None:
    """Refuse a checkpoint of another family or config, naming the field that differs; with
    ``warn``, warn of package versions or a thread count unlike the checkpoint's."""
    if state.get("family") != family.name:
        raise ConfigError(
            f"checkpoint {path} is of family {state.get('family')!r}, the run is {family.name!r}"
        )
    try:
        theirs = json.loads(state["config"])
    except (TypeError, ValueError, KeyError):
        theirs = None
    if not isinstance(theirs, dict):
        raise ConfigError(f"checkpoint {path} holds no config: it is not a metaopt run's")
    theirs = _flat(type(config).upgrade(theirs))
    ours = _flat(json.loads(json.dumps(config.to_dict())))
    ignored = set(type(config).RESUMABLE) | {"out"}
    if config.schedule != "constant":
        ignored.discard("iterations")
    # As JSON holds them (a tuple default reads back as a list), to compare with ``ours``.
    defaults = json.loads(
        json.dumps({f.name: f.default for f in dataclasses.fields(config)}, default=repr)
    )
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
    if warn:  # the threads this process will train with: apply_threads sets them after these checks
        device = str(run_device(config))
        _warn_if_environment_differs(state, config.threads or torch.get_num_threads(), device)


def _warn_if_environment_differs(state: Mapping[str, Any], threads: int, device: str) -> None:
    """A `ResumeWarning` for each package version, thread count or device unlike the
    checkpoint's."""
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
    written_on = state.get("device", "cpu")  # checkpoints before --device were the CPU's
    if written_on != device:
        warnings.warn(
            f"the checkpoint was written on {written_on}, this process trains on {device}: the "
            "continuation may differ from an uninterrupted run in the last bits",
            ResumeWarning,
            stacklevel=4,
        )


def _kept_metrics(path: Path, iteration: int) -> str:
    """The text of ``metrics.jsonl`` up to row ``iteration`` (the rows after the checkpoint go:
    they are logged again). A last line cut short by a kill is dropped with a warning; a bad
    line anywhere else is damage no crash explains, so the resume stops, naming the line, and
    nothing is changed.

    Raises:
        ConfigError: a line before the last one is not a JSON object with an iteration.
    """
    lines = path.read_text().splitlines(keepends=True) if path.is_file() else []
    kept: list[str] = []
    last = 0
    for number, line in enumerate(lines, start=1):
        try:
            row = json.loads(line)
            index = row["iteration"] if isinstance(row, dict) else None
        except (ValueError, KeyError):
            index = None
        if not isinstance(index, int) or not line.endswith("\n"):
            if number == len(lines):
                warnings.warn(
                    f"{path}: the last line ({number}) is incomplete (the run was killed while "
                    "writing it); it is dropped",
                    ResumeWarning,
                    stacklevel=4,
                )
                break
            raise ConfigError(
                f"cannot resume: line {number} of {path} is not a metrics row ({line[:60]!r}); "
                "nothing was changed: repair or delete that line and resume again"
            )
        if index > iteration:
            break
        kept.append(line)
        last = index
    if last != iteration:
        warnings.warn(
            f"{path} ends at iteration {last} but the checkpoint is at iteration {iteration}; "
            "the rows in between were never written and stay missing",
            ResumeWarning,
            stacklevel=4,
        )
    return "".join(kept)
