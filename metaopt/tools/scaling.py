"""``metaopt scale``: how much faster ``metaopt train`` runs on more processes, and that it agrees.

For each repeat and each process count N it runs the family's training as a fresh subprocess,
exactly as a user would: ``python -m metaopt train FAMILY ...`` for N = 1 and
``python -m torch.distributed.run --standalone --nproc-per-node N -m metaopt train FAMILY ...``
otherwise, with ``OMP_NUM_THREADS`` and ``--threads`` set to the same thread count per process.
Within a repeat the process counts take turns (ascending on even repeats, descending on odd
ones), so that a slow stretch of the machine falls on all of them alike rather than on the last.

Three times are measured per run:

* **per-iteration seconds**: the median, over the run's meta-iterations, of the differences of
  the cumulative ``seconds`` column of ``metrics.jsonl`` (the first iteration counted from the
  loop's start). This is the headline: it is the part that sharding divides, and the median
  leaves out what happens once or now and then (the first iteration's warm-up, the periodic
  evaluation, which runs between two iterations), so it does not depend on how long the run is
  or how often it evaluates;
* **training seconds**: the last row's ``seconds``, the whole meta-training loop, periodic
  evaluations included;
* **wall-clock seconds** of the whole subprocess: interpreter and torch start-up, process-group
  rendezvous, training, the final evaluation and the plots. This is what a
  user waits for, and for a short run it is dominated by costs that more processes do not share.

Each is reported as the median over repeats, per process count, with the speed-up
``median at the smallest N / median at N`` (above 1: faster).

Agreement. A sharded run must compute what one process computes (docs/distributed.md): the same
meta-gradients up to the order of floating-point sums. Final meta-parameters are compared per
tensor, ``‖θ − θ_ref‖ ≤ tolerance · ‖θ_ref‖`` (default 1e-5), in two ways that fail the command:

* **across process counts**, on short runs of ``--check-iterations`` (default 5) iterations, one
  per count, launched before the timed runs (so a broken setting fails in seconds, not minutes);
  when the timed runs are no longer than that, their own final parameters are compared instead;
* **across repeats** of one process count: the timed runs must be deterministic, or their times
  would not be of the same computation.

The timed runs' final parameters are also compared across process counts, but only reported:
over hundreds of iterations the last-bit differences do not stay small when the family samples
data with the model (reinforcement learning samples actions from the policy). Sooner or later one
sampled action falls the other way, and from then on the runs see different trajectories. The
seed configuration of ``mdp`` agrees to about 1e-7 in every logged number up to iteration 104 at
1 and 2 processes, and its final parameters differ by a few per cent after 500. The report gives
the iteration at which the runs' logged numbers first differ by more than the tolerance.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from metaopt.training import new_directory
from metaopt.training.family import ConfigError, TaskFamily, TrainConfig, flag

__all__ = [
    "DEFAULT_CHECK_ITERATIONS",
    "DEFAULT_TOLERANCE",
    "Agreement",
    "ParameterMismatch",
    "RunRecord",
    "ScaleFailure",
    "ScaleOptions",
    "add_scale_arguments",
    "check_same_parameters",
    "first_divergence",
    "largest_difference",
    "launch_command",
    "median_iteration_seconds",
    "parse_processes",
    "relative_differences",
    "render_table",
    "run_scale",
    "run_scale_command",
    "summarize",
    "train_flags",
]

#: Largest accepted relative difference of any final meta-parameter tensor between two runs.
DEFAULT_TOLERANCE = 1e-5
#: Iterations of the agreement runs: few enough that no sampled action has flipped yet (the
#: ``mdp`` seed configuration first parts at iteration 105, meta-batch 400 at iteration 24).
DEFAULT_CHECK_ITERATIONS = 5

#: Config fields that ``metaopt scale`` sets itself for every run it launches.
_CONTROLLED = {"out": "--out", "threads": "--threads"}
#: ``metaopt scale``'s own argument names (argparse ``dest``), apart from the family's.
_OWN = (
    "scale_processes",
    "scale_repeats",
    "scale_threads",
    "scale_check_iterations",
    "scale_json",
    "scale_keep",
)


class ScaleFailure(RuntimeError):
    """A launched training run failed, or the runs disagree; ``metaopt scale`` exits with 1."""


class ParameterMismatch(ScaleFailure):
    """Two runs' final meta-parameters differ by more than the tolerance."""


@dataclass(frozen=True)
class ScaleOptions:
    """What ``metaopt scale`` runs, apart from the family's config.

    Attributes:
        processes: Process counts to compare, ascending; speed-ups are stated against the first.
        repeats: Runs per process count; times are medians over them.
        threads: Torch (and OpenMP) threads per process.
        check_iterations: Iterations of the agreement runs across process counts.
        tolerance: Largest relative difference of final meta-parameters accepted across runs.
    """

    processes: tuple[int, ...] = (1, 2)
    repeats: int = 3
    threads: int = 1
    check_iterations: int = DEFAULT_CHECK_ITERATIONS
    tolerance: float = DEFAULT_TOLERANCE

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the first flag that is out of range."""
        if not self.processes or min(self.processes) < 1:
            shown = ",".join(map(str, self.processes))
            raise ConfigError(f"--processes must be integers >= 1, got {shown!r}")
        if list(self.processes) != sorted(set(self.processes)):
            raise ConfigError(
                f"--processes must be distinct and ascending, got {list(self.processes)}"
            )
        for option, value in (
            ("--repeats", self.repeats),
            ("--threads", self.threads),
            ("--check-iterations", self.check_iterations),
        ):
            if value < 1:
                raise ConfigError(f"{option} must be an integer >= 1, got {value}")
        if not self.tolerance > 0:
            raise ConfigError(f"tolerance must be > 0, got {self.tolerance}")


@dataclass(frozen=True)
class RunRecord:
    """One launched training run.

    Attributes:
        processes: Number of processes it ran on.
        repeat: Which repeat (0-based).
        iteration_seconds: Median seconds of one meta-iteration.
        train_seconds: Seconds of the whole meta-training loop (``metrics.jsonl``'s last row).
        wall_seconds: Seconds of the whole subprocess, start-up to exit.
        iterations: Rows in ``metrics.jsonl``.
        run_dir: Where the run wrote its files (gone afterwards unless ``--keep`` was given).
    """

    processes: int
    repeat: int
    iteration_seconds: float
    train_seconds: float
    wall_seconds: float
    iterations: int
    run_dir: str


@dataclass(frozen=True)
class Agreement:
    """How far the runs' final meta-parameters are apart: largest relative differences.

    Attributes:
        check_iterations: Iterations of the runs compared across process counts.
        across_counts: Across process counts after ``check_iterations`` (checked).
        across_repeats: Across the timed repeats of each process count (checked).
        timed_across_counts: Across process counts after the timed runs (reported only).
        first_divergence: Iteration at which the timed runs' logged numbers first differ by
            more than the tolerance across process counts; None if they never do.
    """

    check_iterations: int
    across_counts: float
    across_repeats: float
    timed_across_counts: float
    first_divergence: int | None


# -- the pure parts ------------------------------------------------------------------------------


def parse_processes(text: str) -> tuple[int, ...]:
    """``"1,2,4"`` -> ``(1, 2, 4)``, sorted and without repeats.

    Raises:
        ConfigError: not a comma-separated list of integers >= 1.
    """
    try:
        counts = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ConfigError(
            f"--processes must be comma-separated integers >= 1, got {text!r}"
        ) from None
    if not counts or min(counts) < 1:
        raise ConfigError(f"--processes must be comma-separated integers >= 1, got {text!r}")
    return tuple(sorted(set(counts)))


def median_iteration_seconds(seconds: Sequence[float]) -> float:
    """Median time of one iteration from cumulative times; the first counts from zero."""
    if not seconds:
        raise ValueError("no iterations")
    previous = [0.0, *seconds[:-1]]
    return statistics.median(b - a for a, b in zip(previous, seconds, strict=True))


def summarize(records: Sequence[RunRecord]) -> list[dict[str, Any]]:
    """Medians over repeats per process count, and speed-ups against the smallest count.

    Returns:
        One dict per process count, ascending: ``processes``, ``runs``, the medians
        ``iteration_seconds``, ``train_seconds``, ``wall_seconds``, and for each of them
        ``speedup_<name>`` = median at the smallest count / median at this count.
    """
    counts = sorted({r.processes for r in records})
    rows = []
    for count in counts:
        mine = [r for r in records if r.processes == count]
        row: dict[str, Any] = {"processes": count, "runs": len(mine)}
        for name in ("iteration_seconds", "train_seconds", "wall_seconds"):
            row[name] = statistics.median(getattr(r, name) for r in mine)
        rows.append(row)
    for row in rows:
        for name in ("iteration_seconds", "train_seconds", "wall_seconds"):
            base, this = rows[0][name], row[name]
            row[f"speedup_{name}"] = base / this if this > 0 else math.inf
    return rows


def relative_differences(
    reference: Mapping[str, torch.Tensor], other: Mapping[str, torch.Tensor]
) -> dict[str, float]:
    """Per tensor, ``‖other − reference‖ / ‖reference‖`` (in float64; absolute where it is 0).

    Raises:
        ValueError: the two hold different tensor names or shapes.
    """
    if set(reference) != set(other):
        missing = sorted(set(reference) ^ set(other))
        raise ValueError(f"different parameters: {', '.join(missing)}")
    differences = {}
    for name, ref in reference.items():
        if ref.shape != other[name].shape:
            raise ValueError(f"{name}: shape {tuple(other[name].shape)} != {tuple(ref.shape)}")
        diff = float((other[name].double() - ref.double()).norm())
        norm = float(ref.double().norm())
        differences[name] = diff / norm if norm else diff
    return differences


def largest_difference(
    states: Mapping[str, Mapping[str, torch.Tensor]],
) -> tuple[float, str, str]:
    """The largest relative difference of any tensor of any run from the first run's.

    Args:
        states: Run label -> state dict; the first entry is the reference.

    Returns:
        ``(difference, run label, tensor name)``; ``(0.0, first label, "")`` for a single run.

    Raises:
        ParameterMismatch: a run holds other tensor names or shapes than the reference.
    """
    labels = list(states)
    reference = states[labels[0]]
    worst = (0.0, labels[0], "")
    for label in labels[1:]:
        try:
            differences = relative_differences(reference, states[label])
        except ValueError as error:
            raise ParameterMismatch(f"{label} and {labels[0]}: {error}") from None
        for name, value in differences.items():
            if math.isnan(value):  # nothing is worse
                return value, label, name
            if value > worst[0]:
                worst = (value, label, name)
    return worst


def check_same_parameters(
    states: Mapping[str, Mapping[str, torch.Tensor]],
    tolerance: float = DEFAULT_TOLERANCE,
    why: str = "a sharded run must compute what one process computes",
) -> float:
    """Compare every run's parameters with the first run's; return the largest relative difference.

    Args:
        states: Run label -> state dict; the first entry is the reference.
        tolerance: Largest relative difference accepted for any tensor.
        why: Why they must agree, for the error message.

    Raises:
        ParameterMismatch: a tensor differs by more than ``tolerance`` (or the names differ).
    """
    value, label, name = largest_difference(states)
    if not value <= tolerance:  # NaN fails too
        raise ParameterMismatch(
            f"the final meta-parameters of {label} differ from {next(iter(states))}'s: {name} "
            f"by {value:.3g} (relative), more than {tolerance:g}; {why}"
        )
    return value


def first_divergence(
    rows: Sequence[Mapping[str, Any]], others: Sequence[Mapping[str, Any]], tolerance: float
) -> int | None:
    """The first iteration whose logged numbers (times aside) differ by more than ``tolerance``.

    Values are compared relative to the larger magnitude; a missing row or key, or a value
    logged as null in one run only, is a difference. None if the runs never differ.
    """
    for index in range(max(len(rows), len(others))):
        if index >= min(len(rows), len(others)):
            return index + 1
        a, b = rows[index], others[index]
        for key in (set(a) | set(b)) - {"seconds", "iteration"}:
            x, y = a.get(key), b.get(key)
            if x is None or y is None:
                if x is not y:
                    return int(a.get("iteration", index + 1))
            elif not abs(x - y) <= tolerance * max(abs(x), abs(y)):
                return int(a.get("iteration", index + 1))
    return None


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


def render_table(
    summary: Sequence[Mapping[str, Any]],
    *,
    family: str,
    flags: Sequence[str],
    config: TrainConfig,
    options: ScaleOptions,
    agreement: Agreement,
) -> str:
    """The printed report: setting, one row per process count, and the parameter agreement."""
    base = summary[0]["processes"]
    shown_flags = " ".join(flags) if flags else "(the family's defaults)"
    process_word = "process" if base == 1 else "processes"
    periodic = (
        f"periodic evaluation every {config.eval_every} iterations"
        if config.eval_every
        else "no periodic evaluation"
    )
    lines = [
        f"metaopt scale {family}: processes {','.join(map(str, options.processes))}, "
        f"{options.threads} thread(s) per process (OMP_NUM_THREADS={options.threads}), "
        f"{os.cpu_count()} CPU(s), torch {torch.__version__}",
        f"  flags: {shown_flags}",
        f"  config: {config.algo}, meta-batch {config.meta_batch}, {config.iterations} "
        f"iterations, {periodic}, final evaluation on {config.eval_tasks} tasks",
        f"  medians over {options.repeats} repeat(s); speed-up = median at {base} "
        f"{process_word} / median at N",
        "",
        f"  {'processes':>9s} {'ms/iteration':>13s} {'speed-up':>9s} {'training s':>11s} "
        f"{'speed-up':>9s} {'wall s':>8s} {'speed-up':>9s}",
    ]
    for row in summary:
        lines.append(
            f"  {row['processes']:9d} {row['iteration_seconds'] * 1e3:13.2f} "
            f"{row['speedup_iteration_seconds']:8.2f}× {row['train_seconds']:11.2f} "
            f"{row['speedup_train_seconds']:8.2f}× {row['wall_seconds']:8.2f} "
            f"{row['speedup_wall_seconds']:8.2f}×"
        )

    def verdict(value: float) -> str:
        return "agree" if value <= options.tolerance else "DIFFER"

    lines += [
        "",
        f"  final meta-parameters, largest relative difference (tolerance {options.tolerance:g}):",
        f"    across process counts after {agreement.check_iterations} iteration(s): "
        f"{agreement.across_counts:.2g} ({verdict(agreement.across_counts)})",
        f"    across repeats of each process count: {agreement.across_repeats:.2g} "
        f"({verdict(agreement.across_repeats)})",
    ]
    if agreement.check_iterations < config.iterations:
        parted = (
            f"the logged numbers first differ by more than {options.tolerance:g} at iteration "
            f"{agreement.first_divergence}"
            if agreement.first_divergence is not None
            else "the logged numbers agree at every iteration"
        )
        lines.append(
            f"    across process counts after {config.iterations} iterations: "
            f"{agreement.timed_across_counts:.2g} (not checked: {parted})"
        )
    return "\n".join(lines)


# -- running -------------------------------------------------------------------------------------


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


def _processes(count: int) -> str:
    return f"{count} process{'es' if count > 1 else ''}"


def run_scale(
    family: TaskFamily,
    overrides: Mapping[str, Any],
    options: ScaleOptions = ScaleOptions(),
    *,
    json_path: Path | str | None = None,
    keep: Path | str | None = None,
    echo: Callable[[str], None] = print,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Check that the process counts agree, time ``metaopt train`` at each, print the table.

    Args:
        family: The task family (registered under ``family.name``: the runs are subprocesses).
        overrides: Config fields as the user gave them (not ``out`` nor ``threads``).
        options: Process counts, repeats, threads per process, agreement runs, tolerance.
        json_path: Where to write the records, the summary and the setting as JSON.
        keep: Directory for the runs (new or empty); a temporary one, removed at the end, if None.
        echo: Where the table goes.
        progress: Where the one-line-per-run progress goes (default: stderr).

    Returns:
        The JSON document: setting, ``records``, ``summary`` and ``agreement``.

    Raises:
        ConfigError: an out-of-range option or config value, before anything is launched.
        ScaleFailure: a run failed, or :class:`ParameterMismatch`: the agreement runs differ
            (before any timed run), or the timed runs do (after the table and the JSON).
    """
    from metaopt.training.config import resolve_config

    options.validate()
    user_flags = train_flags(family.config_class, overrides)
    config = resolve_config(family, {**overrides, "threads": options.threads})
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
    if progress is None:

        def progress(line: str) -> None:
            print(line, file=sys.stderr, flush=True)

    threads = ["--threads", str(options.threads)]
    env = {**os.environ, "OMP_NUM_THREADS": str(options.threads)}
    records: list[RunRecord] = []
    states: dict[int, dict[str, dict[str, torch.Tensor]]] = {n: {} for n in options.processes}
    rows: dict[int, list[dict[str, Any]]] = {}
    across_counts: float | None = None
    with tempfile.TemporaryDirectory(prefix="metaopt-scale-") as scratch:
        root = kept if kept is not None else Path(scratch)
        if separate_check:  # first, so that a setting whose runs disagree fails at once
            checked: dict[str, dict[str, torch.Tensor]] = {}
            for count in options.processes:
                label = f"{_processes(count)}, {check_iterations} iteration(s)"
                run_dir = root / f"check-p{count}"
                command = launch_command(family.name, [*check_flags, *threads], count, run_dir)
                wall = _run_once(command, env, label)
                checked[label] = _final_parameters(run_dir)
                progress(f"metaopt scale: agreement run, {label}: {wall:.2f} s wall")
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
            progress(
                f"metaopt scale: {label}/{options.repeats}: {record.train_seconds:.2f} s training "
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
    agreement = Agreement(
        check_iterations=check_iterations,
        across_counts=timed_across_counts if across_counts is None else across_counts,
        across_repeats=across_repeats,
        timed_across_counts=timed_across_counts,
        first_divergence=min(found) if found else None,
    )
    summary = summarize(records)
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


# -- the command ---------------------------------------------------------------------------------


def add_scale_arguments(parser: argparse.ArgumentParser) -> None:
    """``metaopt scale FAMILY``'s own flags; the family's config flags are added separately.

    The parser needs ``conflict_handler="resolve"``: ``--threads`` replaces the config's flag (it
    sets the runs' ``--threads`` and ``OMP_NUM_THREADS``), and ``--out`` is hidden.
    """
    defaults = ScaleOptions()
    parser.add_argument(
        "--processes",
        dest="scale_processes",
        default=",".join(map(str, defaults.processes)),
        metavar="LIST",
        help="comma-separated process counts; speed-ups are against the smallest "
        f"(default: {','.join(map(str, defaults.processes))})",
    )
    parser.add_argument(
        "--repeats",
        dest="scale_repeats",
        type=int,
        default=defaults.repeats,
        metavar="N",
        help=f"runs per process count; times are medians over them (default: {defaults.repeats})",
    )
    parser.add_argument(
        "--threads",
        dest="scale_threads",
        type=int,
        default=defaults.threads,
        metavar="N",
        help="torch threads per process: the runs' --threads and OMP_NUM_THREADS "
        f"(default: {defaults.threads})",
    )
    parser.add_argument(
        "--check-iterations",
        dest="scale_check_iterations",
        type=int,
        default=defaults.check_iterations,
        metavar="N",
        help="before timing, one run of N iterations per process count, whose final "
        "meta-parameters must agree; long runs of a family that samples with the model part "
        f"after a while (default: {defaults.check_iterations})",
    )
    parser.add_argument(
        "--json",
        dest="scale_json",
        type=Path,
        default=None,
        metavar="PATH",
        help="write every run's times, the summary and the setting as JSON",
    )
    parser.add_argument(
        "--keep",
        dest="scale_keep",
        type=Path,
        default=None,
        metavar="DIR",
        help="keep the runs' directories in DIR, new or empty (default: a temporary directory)",
    )
    # Each run writes its own directory: --out would be ambiguous. Hidden, and refused if given.
    parser.add_argument("--out", dest="out", default=argparse.SUPPRESS, help=argparse.SUPPRESS)


def run_scale_command(family: TaskFamily, arguments: Mapping[str, Any]) -> int:
    """``metaopt scale``: options from the parsed arguments, run, and the exit status.

    Returns 0, or 1 (with the reason on stderr) when a run failed or the runs disagree.

    Raises:
        ConfigError: an out-of-range flag (exit status 2), before anything is launched.
    """
    options = ScaleOptions(
        processes=parse_processes(arguments["scale_processes"]),
        repeats=arguments["scale_repeats"],
        threads=arguments["scale_threads"],
        check_iterations=arguments["scale_check_iterations"],
    )
    overrides = {k: v for k, v in arguments.items() if k not in (*_OWN, "command", "family")}
    try:
        run_scale(
            family,
            overrides,
            options,
            json_path=arguments["scale_json"],
            keep=arguments["scale_keep"],
        )
    except ScaleFailure as error:
        print(f"metaopt: error: {error}", file=sys.stderr)
        return 1
    return 0
