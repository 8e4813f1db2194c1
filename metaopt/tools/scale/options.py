"""What ``metaopt scale`` runs (`ScaleOptions`), what it records, how it fails."""

from __future__ import annotations

from dataclasses import dataclass

from metaopt.training import ConfigError, option
from metaopt.training.family import flag

#: Largest accepted relative difference of any final meta-parameter tensor between two runs.
DEFAULT_TOLERANCE = 1e-5
#: Iterations of the agreement runs: few enough that no sampled action has flipped yet (the
#: ``mdp`` defaults first part at iteration 80, meta-batch 400 at iteration 24).
DEFAULT_CHECK_ITERATIONS = 5


class ScaleFailure(RuntimeError):
    """A launched training run failed, or the runs disagree; ``metaopt scale`` exits with 1."""


class ParameterMismatch(ScaleFailure):
    """Two runs' final meta-parameters differ by more than the tolerance."""


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


@dataclass(frozen=True)
class ScaleOptions:
    """What ``metaopt scale`` runs, apart from the family's config.

    Each field but ``tolerance`` is a flag of ``metaopt scale FAMILY`` (``--processes``, ...;
    `metaopt.training.config.add_dataclass_arguments` reads the help from the metadata).

    Attributes:
        processes: Process counts to compare, ascending; speed-ups are stated against the first.
        repeats: Runs per process count; times are medians over them.
        threads: Torch (and OpenMP) threads per process.
        check_iterations: Iterations of the agreement runs across process counts.
        tolerance: Largest relative difference of final meta-parameters accepted across runs.
    """

    processes: tuple[int, ...] = option(
        (1, 2),
        "comma-separated process counts; speed-ups are against the smallest",
        metadata={"convert": parse_processes, "metavar": "LIST"},
    )
    repeats: int = option(
        3, "runs per process count; times are medians over them", metadata={"metavar": "N"}
    )
    threads: int = option(
        1,
        "torch threads per process: the runs' --threads and OMP_NUM_THREADS",
        metadata={"metavar": "N"},
    )
    check_iterations: int = option(
        DEFAULT_CHECK_ITERATIONS,
        "before timing, one run of N iterations per process count, whose final meta-parameters "
        "must agree. Kept short on purpose: in RL, where the model samples its own episodes, "
        "last-bit differences between process counts eventually change one sampled action, "
        "after which the runs differ (the mdp defaults after about 80 iterations)",
        metadata={"metavar": "N"},
    )
    tolerance: float = DEFAULT_TOLERANCE

    def validate(self) -> None:
        """Raise [`ConfigError`][metaopt.training.ConfigError] naming the first flag that is out of
        range."""
        if not self.processes or min(self.processes) < 1:
            shown = ",".join(map(str, self.processes))
            raise ConfigError(f"--processes must be integers >= 1, got {shown!r}")
        if list(self.processes) != sorted(set(self.processes)):
            raise ConfigError(
                f"--processes must be distinct and ascending, got {list(self.processes)}"
            )
        for name in ("repeats", "threads", "check_iterations"):
            value = getattr(self, name)
            if value < 1:
                raise ConfigError(f"{flag(name)} must be an integer >= 1, got {value}")
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
class ParameterAgreement:
    """How far the runs' final meta-parameters are apart: largest relative differences.

    Attributes:
        check_iterations: Iterations of the runs compared across process counts.
        across_counts: Across process counts after ``check_iterations`` (checked).
        across_repeats: Across the timed repeats of each process count (checked).
        timed_across_counts: Across process counts after the timed runs (reported only).
        first_divergence: Iteration at which the timed runs' logged numbers first differ by
            more than the tolerance across process counts; None if they never do.
        largest_metric_difference: The largest relative difference of any number the timed
            runs logged (``metrics.jsonl``, times aside) across process counts, over the whole
            runs (reported only); None with one process count.
        largest_metric: Which number that was.
        largest_metric_iteration: At which iteration.
    """

    check_iterations: int
    across_counts: float
    across_repeats: float
    timed_across_counts: float
    first_divergence: int | None
    largest_metric_difference: float | None = None
    largest_metric: str | None = None
    largest_metric_iteration: int | None = None
