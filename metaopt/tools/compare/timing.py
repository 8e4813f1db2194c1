"""The wall time of one meta-iteration per method, round-robin over the methods."""

from __future__ import annotations

import functools
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from metaopt.algorithms import MetaLearner
from metaopt.task import Task
from metaopt.tools.bench.memory import peak_memory_bytes
from metaopt.tools.compare.gradients import draw_tasks, method_algorithm
from metaopt.tools.compare.memory import SavedTensorMeter
from metaopt.tools.compare.options import ModelState
from metaopt.training import (
    TaskFamily,
    TrainConfig,
    autocast,
    build_outer_optimizer,
    run_device,
)

__all__ = ["Timing", "time_meta_iterations"]


@dataclass(frozen=True)
class Timing:
    """Cost of one meta-iteration of one method.

    Attributes:
        method: The algorithm.
        steps: Inner steps.
        median_s: Median wall time of ``zero_grad``, ``meta_backward`` and the outer step.
        q1_s: First quartile.
        q3_s: Third quartile.
        min_s: Fastest repetition (the least disturbed by other processes).
        repeats: Timed repetitions (after one warm-up).
        saved_peak_bytes: `SavedTensorMeter` peak during the warm-up iteration;
            ``None`` for a method whose meta-iteration runs ``torch.func`` transforms (iMAML's
            implicit solve), which refuse saved-tensor hooks.
        peak_bytes: Peak bytes of torch's CPU allocator during one meta-iteration after the
            warm-up, above what was live before (the bench's
            `peak_memory_bytes`): every method, iMAML included.
    """

    method: str
    steps: int
    median_s: float
    q1_s: float
    q3_s: float
    min_s: float
    repeats: int
    saved_peak_bytes: int | None
    peak_bytes: int


class _Timed:
    """One method ready to be timed: its algorithm around a fresh model at ``state`` (from
    `method_algorithm`, with the config it was built from) and its outer optimiser."""

    def __init__(
        self,
        family: TaskFamily,
        built: tuple[TrainConfig, MetaLearner],
        state: ModelState,
        task_seed: int | Sequence[int],
    ) -> None:
        self.family, self.state, self.task_seed = family, state, task_seed
        self.config, self.algo = built
        self.outer, _ = build_outer_optimizer(self.config, self.algo)
        self.learned = self.algo.learned_state()
        self.device = run_device(self.config)

    def reset(self) -> Sequence[Task]:
        """Back to ``state`` (rates included) and the same tasks, untimed."""
        self.algo.model.load_state_dict(self.state)
        self.algo.load_learned_state(self.learned)
        return draw_tasks(self.family, self.config, self.task_seed, self.config.meta_batch)

    def iteration(self, tasks: Sequence[Task]) -> float:
        start = time.perf_counter()
        self.outer.zero_grad(set_to_none=True)
        with autocast(self.config, self.device):
            self.algo.meta_backward(tasks)
        self.outer.step()
        return time.perf_counter() - start


def time_meta_iterations(
    family: TaskFamily,
    config: TrainConfig,
    methods: Sequence[str],
    state: ModelState,
    *,
    steps: int,
    repeats: int,
    task_seed: int | Sequence[int],
) -> list[Timing]:
    """Time ``repeats`` meta-iterations of each of ``methods`` from ``state`` on one meta-batch.

    Each method first runs one warm-up iteration, which also measures the saved-tensor peak
    (where the method allows saved-tensor hooks), then one iteration under the profiler for the
    allocator's peak.
    The timed repetitions then go round-robin over the methods, so that a change in the load of
    the machine affects all of them alike. Each repetition restores the model to ``state`` and
    draws the same tasks (untimed), then times ``zero_grad``, ``meta_backward`` and the outer
    step. Sampling inside the losses (RL trajectories) is part of the time.
    """
    timed = [
        _Timed(family, method_algorithm(family, config, m, steps, state), state, task_seed)
        for m in methods
    ]
    saved, peaks = [], []
    for t in timed:
        saved.append(_saved_peak(t))
        peaks.append(peak_memory_bytes(functools.partial(t.iteration, t.reset())))
    times: list[list[float]] = [[] for _ in timed]
    for _ in range(repeats):
        for t, record in zip(timed, times, strict=True):
            record.append(t.iteration(t.reset()))
    out = []
    for method, record, kept, peak in zip(methods, times, saved, peaks, strict=True):
        q1, median, q3 = np.percentile(record, [25, 50, 75])
        quartiles = (float(median), float(q1), float(q3))
        out.append(Timing(method, steps, *quartiles, min(record), repeats, kept, peak))
    return out


def _saved_peak(timed: _Timed) -> int | None:
    """The warm-up iteration under `SavedTensorMeter`: its peak, or ``None`` when the
    iteration runs a ``torch.func`` transform, which refuses saved-tensor hooks (then the
    warm-up runs again without the meter)."""
    try:
        with SavedTensorMeter() as meter:
            timed.iteration(timed.reset())
    except RuntimeError as error:
        if "saved tensor hooks" not in str(error):
            raise
        timed.iteration(timed.reset())
        return None
    return meter.peak_bytes
