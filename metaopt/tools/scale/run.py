"""Running ``metaopt train`` at each process count as a user would, in subprocesses."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from metaopt.tools.scale.measurement import (
    check_same_parameters,
    first_divergence,
    largest_difference,
    largest_metric_difference,
    median_iteration_seconds,
    summarize_runs,
)
from metaopt.tools.scale.options import ParameterAgreement, RunRecord, ScaleFailure, ScaleOptions
from metaopt.tools.scale.report import render_table
from metaopt.training import ConfigError, TaskFamily, TrainConfig, new_directory, run_device
from metaopt.training.algorithm_config import config_flag_names
from metaopt.training.family import flag
from metaopt.training.progress import StepProgress

__all__ = ["launch_command", "run_scale", "train_flags"]


#: Config fields that ``metaopt scale`` sets itself for every run it launches.
_CONTROLLED = {"out": "--out", "threads": "--threads"}


def train_flags(config_class: type[TrainConfig], overrides: Mapping[str, Any]) -> list[str]:
    """The ``metaopt train`` flags that give ``overrides``, in the config's field order.

    Raises:
        ConfigError: a field that ``metaopt scale`` sets itself, an unknown field, or ``None``.
    """
    for name, option in _CONTROLLED.items():
        if name in overrides:
            raise ConfigError(
                f"{option} is set by metaopt scale itself"
                + ("; use --keep DIR to keep the runs" if name == "out" else "")
            )
    fields = [f.name for f in dataclasses.fields(config_class)]
    fields += sorted(config_flag_names(config_class) - set(fields))  # the algorithms' options
    unknown = sorted(set(overrides) - set(fields))
    if unknown:
        raise ConfigError(f"unknown option(s) {', '.join(unknown)}")
    flags = []
    for name in fields:
        if name not in overrides:
            continue
        option, value = flag(name), overrides[name]
        if isinstance(value, bool):
            flags.append(option if value else "--no-" + option[2:])
        elif isinstance(value, tuple):
            flags += [option, ",".join(map(str, value))]
        elif value is None:
            raise ConfigError(f"{option}: None cannot be passed on the command line")
        else:
            flags += [option, str(value)]
    return flags


def launch_command(family: str, flags: Sequence[str], processes: int, out: Path) -> list[str]:
    """The command line of one run: ``metaopt train`` alone, or under torchrun for N > 1.

    ``--standalone`` lets torchrun pick a free rendezvous port on this machine.
    """
    train = ["-m", "metaopt", "train", family, *flags, "--out", str(out), "--quiet"]
    if processes == 1:
        return [sys.executable, *train]
    launcher = ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(processes)]
    return [sys.executable, *launcher, *train]


def _tail(text: str, lines: int = 30) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def _run_once(command: Sequence[str], env: Mapping[str, str], label: str) -> float:
    """Run one training subprocess; return its wall-clock seconds.

    Raises:
        ScaleFailure: it exited with a non-zero status (the message ends with its stderr).
    """
    start = time.perf_counter()
    done = subprocess.run(list(command), env=dict(env), capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise ScaleFailure(
            f"{label} failed with exit status {done.returncode}: {' '.join(command)}\n"
            f"--- last lines of its stderr ---\n{_tail(done.stderr) or '(empty)'}"
        )
    return wall


def _read_rows(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / "metrics.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if not rows:
        raise ScaleFailure(f"{path} has no rows")
    return rows


def _final_parameters(run_dir: Path) -> dict[str, torch.Tensor]:
    from metaopt.training.checkpoint import load_checkpoint

    state: dict[str, torch.Tensor] = load_checkpoint(run_dir / "checkpoint.pt")["algorithm"][
        "model"
    ]
    return state


def _schedule(options: ScaleOptions) -> list[tuple[int, int]]:
    """(repeat, processes) in running order: the counts take turns, alternating direction."""
    order = []
    for repeat in range(options.repeats):
        counts = options.processes if repeat % 2 == 0 else tuple(reversed(options.processes))
        order += [(repeat, count) for count in counts]
    return order


def _worse_first(difference: tuple[float, str, int]) -> tuple[bool, float]:
    """Sort key of ``(difference, key, iteration)``: a NaN above every number."""
    return math.isnan(difference[0]), 0.0 if math.isnan(difference[0]) else difference[0]


def _processes(count: int) -> str:
    return f"{count} process{'es' if count > 1 else ''}"


def run_scale(
    family: TaskFamily,
    overrides: Mapping[str, Any],
    options: ScaleOptions | None = None,
    *,
    json_path: Path | str | None = None,
    keep: Path | str | None = None,
    echo: Callable[[str], None] = print,
    progress: bool | None = None,
) -> dict[str, Any]:
    """Check that the process counts agree, time ``metaopt train`` at each, print the table.

    Args:
        family: The task family (registered under ``family.name``: the runs are subprocesses).
        overrides: Config fields as the user gave them (not ``out`` nor ``threads``).
        options: Process counts, repeats, threads per process, agreement runs, tolerance
            (default: `ScaleOptions`()).
        json_path: Where to write the records, the summary and the setting as JSON.
        keep: Directory for the runs (new or empty); a temporary one, removed at the end, if None.
        echo: Where the table goes.
        progress: Progress over the runs, each run's times its note: a bar on a terminal and
            lines off it (``None``), the bar (``True``) or neither (``False``); see
            ``metaopt.training.progress.StepProgress``.

    Returns:
        The JSON document: setting, ``records``, ``summary`` and ``agreement``.

    Raises:
        ConfigError: an out-of-range option or config value, before anything is launched.
        ScaleFailure: a run failed, or `ParameterMismatch`: the agreement runs differ
            (before any timed run), or the timed runs do (after the table and the JSON).
    """
    from metaopt.training.config import resolve_config

    options = options or ScaleOptions()
    options.validate()
    user_flags = train_flags(family.config_class, overrides)
    config = resolve_config(family, {**overrides, "threads": options.threads})
    run_device(config)  # --device this machine lacks: refused before anything is launched
    if config.meta_batch < max(options.processes):
        raise ConfigError(
            f"--processes {max(options.processes)} is more than --meta-batch "
            f"{config.meta_batch}: every process needs at least one task"
        )
    separate_check = len(options.processes) > 1 and options.check_iterations < config.iterations
    check_iterations = options.check_iterations if separate_check else config.iterations
    check_flags = train_flags(family.config_class, {**overrides, "iterations": check_iterations})
    kept = (
        new_directory(Path(keep), "--keep", "choose a new directory for the runs")
        if keep is not None
        else None
    )
    threads = ["--threads", str(options.threads)]
    env = {**os.environ, "OMP_NUM_THREADS": str(options.threads)}
    records: list[RunRecord] = []
    states: dict[int, dict[str, dict[str, torch.Tensor]]] = {n: {} for n in options.processes}
    rows: dict[int, list[dict[str, Any]]] = {}
    across_counts: float | None = None
    runs = len(_schedule(options)) + (len(options.processes) if separate_check else 0)
    with (
        tempfile.TemporaryDirectory(prefix="metaopt-scale-") as scratch,
        StepProgress(f"scale {family.name}", runs, unit="run", show=progress) as bar,
    ):
        root = kept if kept is not None else Path(scratch)
        if separate_check:  # first, so that a setting whose runs disagree fails at once
            checked: dict[str, dict[str, torch.Tensor]] = {}
            for count in options.processes:
                label = f"{_processes(count)}, {check_iterations} iteration(s)"
                run_dir = root / f"check-p{count}"
                command = launch_command(family.name, [*check_flags, *threads], count, run_dir)
                wall = _run_once(command, env, label)
                checked[label] = _final_parameters(run_dir)
                bar.update(f"agreement run, {label}: {wall:.2f} s wall")
            across_counts = check_same_parameters(checked, options.tolerance)
        for repeat, count in _schedule(options):
            label = f"{_processes(count)}, repeat {repeat + 1}"
            run_dir = root / f"p{count}-r{repeat + 1}"
            command = launch_command(family.name, [*user_flags, *threads], count, run_dir)
            wall = _run_once(command, env, label)
            logged = _read_rows(run_dir)
            seconds = [float(row["seconds"]) for row in logged]
            record = RunRecord(
                processes=count,
                repeat=repeat,
                iteration_seconds=median_iteration_seconds(seconds),
                train_seconds=seconds[-1],
                wall_seconds=wall,
                iterations=len(seconds),
                run_dir=str(run_dir),
            )
            records.append(record)
            states[count][label] = _final_parameters(run_dir)
            rows.setdefault(count, logged)
            bar.update(
                f"{label}/{options.repeats}: {record.train_seconds:.2f} s training "
                f"({record.iteration_seconds * 1e3:.2f} ms per iteration), "
                f"{record.wall_seconds:.2f} s wall"
            )
    # Each count's first repeat stands for it across counts (dicts keep insertion order).
    firsts = {
        label: state for by_label in states.values() for label, state in [*by_label.items()][:1]
    }
    timed_across_counts = largest_difference(firsts)[0]
    across_repeats = max(largest_difference(s)[0] for s in states.values())
    base = options.processes[0]
    divergences = [
        first_divergence(rows[base], rows[n], options.tolerance) for n in options.processes[1:]
    ]
    found = [d for d in divergences if d is not None]
    largest = [largest_metric_difference(rows[base], rows[n]) for n in options.processes[1:]]
    # the largest over the counts; a NaN (nothing is worse) wins
    worst = max((w for w in largest if w is not None), key=_worse_first, default=None)
    agreement = ParameterAgreement(
        check_iterations=check_iterations,
        across_counts=timed_across_counts if across_counts is None else across_counts,
        across_repeats=across_repeats,
        timed_across_counts=timed_across_counts,
        first_divergence=min(found) if found else None,
        largest_metric_difference=None if worst is None else worst[0],
        largest_metric=None if worst is None else worst[1],
        largest_metric_iteration=None if worst is None else worst[2],
    )
    summary = summarize_runs(records)
    echo(
        render_table(
            summary,
            family=family.name,
            flags=user_flags,
            config=config,
            options=options,
            agreement=agreement,
        )
    )
    document = {
        "family": family.name,
        "flags": [*user_flags, *threads],
        "config": config.to_dict(),
        "processes": list(options.processes),
        "repeats": options.repeats,
        "threads": options.threads,
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "tolerance": options.tolerance,
        "max_rel_param_diff": agreement.across_counts,
        "params_agree": all(
            value <= options.tolerance
            for value in (agreement.across_counts, agreement.across_repeats)
        ),
        "agreement": dataclasses.asdict(agreement),
        "records": [dataclasses.asdict(r) for r in records],
        "summary": summary,
    }
    if json_path is not None:
        Path(json_path).write_text(json.dumps(document, indent=2) + "\n")
    if not separate_check:  # the timed runs were the agreement runs
        check_same_parameters(firsts, options.tolerance)
    for count_states in states.values():
        check_same_parameters(
            count_states,
            options.tolerance,
            why="repeats of one process count must compute the same thing, or their times "
            "are not of one computation",
        )
    return document
