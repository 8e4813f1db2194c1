"""The pure parts of ``metaopt scale``: times from the runs' logs, medians and speed-ups, and
how far two runs' final meta-parameters are apart.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch

from metaopt.tools.scale.options import DEFAULT_TOLERANCE, ParameterMismatch, RunRecord

__all__ = [
    "check_same_parameters",
    "first_divergence",
    "largest_difference",
    "largest_metric_difference",
    "median_iteration_seconds",
    "metric_differences",
    "relative_differences",
    "summarize_runs",
]


def median_iteration_seconds(seconds: Sequence[float]) -> float:
    """Median time of one iteration from cumulative times; the first counts from zero."""
    if not seconds:
        raise ValueError("no iterations")
    previous = [0.0, *seconds[:-1]]
    return statistics.median(b - a for a, b in zip(previous, seconds, strict=True))


def summarize_runs(records: Sequence[RunRecord]) -> list[dict[str, Any]]:
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


def metric_differences(
    rows: Sequence[Mapping[str, Any]], others: Sequence[Mapping[str, Any]]
) -> Iterator[tuple[int, str, float]]:
    """``(iteration, key, difference)`` for every number two runs logged (times aside), row by row.

    The difference is relative to the larger magnitude, ``|x − y| / max(|x|, |y|)`` (0 where the
    values are equal, NaN where one is); a value logged as null in one run only is ``inf``, and so
    is a row that only one run has (key ``"(row)"``, iteration: its position from 1).
    """
    for index in range(max(len(rows), len(others))):
        if index >= min(len(rows), len(others)):
            yield index + 1, "(row)", math.inf
            continue
        a, b = rows[index], others[index]
        iteration = int(a.get("iteration", index + 1))
        for key in sorted((set(a) | set(b)) - {"seconds", "iteration"}):
            x, y = a.get(key), b.get(key)
            if x is None or y is None:
                yield iteration, key, 0.0 if x is y else math.inf
            elif x == y:
                yield iteration, key, 0.0
            else:
                yield iteration, key, abs(x - y) / max(abs(x), abs(y))


def first_divergence(
    rows: Sequence[Mapping[str, Any]], others: Sequence[Mapping[str, Any]], tolerance: float
) -> int | None:
    """The first iteration whose logged numbers (times aside) differ by more than ``tolerance``
    (`metric_differences`: relative to the larger magnitude; a missing row or key, or a
    value logged as null in one run only, is a difference). None if the runs never differ."""
    for iteration, _, difference in metric_differences(rows, others):
        if not difference <= tolerance:  # NaN too
            return iteration
    return None


def largest_metric_difference(
    rows: Sequence[Mapping[str, Any]], others: Sequence[Mapping[str, Any]]
) -> tuple[float, str, int] | None:
    """``(difference, key, iteration)`` of the largest `metric_differences` over the whole
    runs (the first where several are equal; a NaN is the largest); None without rows."""
    worst: tuple[float, str, int] | None = None
    for iteration, key, difference in metric_differences(rows, others):
        if math.isnan(difference):
            return difference, key, iteration
        if worst is None or difference > worst[0]:
            worst = (difference, key, iteration)
    return worst
