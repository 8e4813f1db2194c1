"""Summary statistics for results over tasks."""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np

__all__ = ["Z95", "mean_ci95"]

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
