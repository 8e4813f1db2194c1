"""Summary statistics for results over tasks."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import numpy as np

__all__ = ["Z95", "mean_ci95", "task_summary"]

#: Two-sided 95% quantile of the standard normal. Evaluations here use hundreds of tasks, where the
#: normal and Student-t quantiles agree to better than 1%.
Z95 = 1.959963984540054


def mean_ci95(values: Iterable[float]) -> tuple[float, float]:
    """Mean and half-width of its 95% confidence interval, ``1.96 · sd / sqrt(n)``.

    For a paired comparison (the same tasks before and after adaptation), pass the per-task
    differences: the interval of the mean difference is the one that resolves the effect.

    Raises:
        ValueError: when ``values`` is empty or holds a non-finite number.
    """
    array = np.asarray(list(values), dtype=np.float64)
    if array.size == 0:
        raise ValueError("mean_ci95 needs at least one value")
    if not np.all(np.isfinite(array)):
        raise ValueError("mean_ci95 got a non-finite value")
    if array.size == 1:
        return float(array[0]), math.inf
    half_width = Z95 * float(array.std(ddof=1)) / math.sqrt(array.size)
    return float(array.mean()), half_width


def task_summary(values: Iterable[float] | np.ndarray) -> dict[str, Any]:
    """``{"mean": m, "ci95": c}`` of per-task values ([`mean_ci95`][metaopt.mean_ci95]), for
    eval.json.

    When some tasks diverged (an infinite or NaN value), the mean is reported as infinite (NaN if
    any value is NaN) with an infinite interval, ``diverged`` counts those tasks and ``finite``
    summarises the others (``{"mean", "ci95", "tasks"}``, absent when none is finite), so that a
    divergence is visible rather than hidden or fatal.
    """
    array = np.asarray(values, dtype=np.float64).ravel()
    finite = np.isfinite(array)
    if finite.all():
        mean, half_width = mean_ci95(array)
        return {"mean": mean, "ci95": half_width}
    result: dict[str, Any] = {
        "mean": float("nan") if np.isnan(array).any() else float(np.mean(array)),
        "ci95": float("inf"),
        "diverged": int((~finite).sum()),
    }
    if finite.any():
        mean, half_width = mean_ci95(array[finite])
        result["finite"] = {"mean": mean, "ci95": half_width, "tasks": int(finite.sum())}
    return result
