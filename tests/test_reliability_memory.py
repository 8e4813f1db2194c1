"""Memory does not grow across meta-iterations.

A family records, every few iterations, the process's resident memory (``/proc/self/statm``: torch's
CPU allocator is invisible to tracemalloc) and the number of live tensors (``gc``). Over a few
hundred iterations of ``train``, the last stretch must not hold more than the first: a leaked
graph or meta-batch per iteration shows as a growing tensor count long before it shows in RSS.
"""

from __future__ import annotations

import gc
import os
from pathlib import Path

import pytest
import torch
from reliability_helpers import CHEAP, family

from metaopt.training import train
from metaopt.training.config import resolve_config
from metaopt.training.family import TaskFamily

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="needs Linux /proc"),
]

ITERATIONS = 300
#: The first and the last stretch compared (the first 25 iterations are warm-up).
STRETCH = 75
PAGE = os.sysconf("SC_PAGE_SIZE")


def _rss() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * PAGE


def _live_tensors() -> int:
    gc.collect()
    # type(), not isinstance(): the latter asks some lazy module proxies for __class__.
    return sum(1 for obj in gc.get_objects() if issubclass(type(obj), torch.Tensor))


def measured(inner: TaskFamily, iterations: int, leak: bool = False) -> TaskFamily:
    """``inner`` recording, before drawing each batch, the resident memory (every iteration) and
    the live tensors (at the ends of the two stretches: a census takes a while).

    With ``leak`` it also keeps every meta-batch's first query loss with its graph: the leak the
    test must catch.
    """
    census = {25 + STRETCH // 2, 25 + STRETCH, iterations - STRETCH // 2, iterations}

    def sample_tasks(self, config, rng, num_tasks):
        done = getattr(self, "done", 0)  # iterations completed
        self.rss[done] = _rss()
        if done in census:
            self.tensors[done] = _live_tensors()
        tasks = type(inner).sample_tasks(self, config, rng, num_tasks)
        if leak:
            self.kept.append(tasks[0].query_loss(self.model))
        self.done = done + 1
        return tasks

    def make_model(self, config):
        self.model = type(inner).make_model(self, config)
        return self.model

    cls = type(inner)
    attributes = {"sample_tasks": sample_tasks, "make_model": make_model}
    probe = type(f"Measured{cls.__name__}", (cls,), attributes)()
    probe.rss, probe.tensors, probe.kept = {}, {}, []
    return probe


def growth(probe: TaskFamily, iterations: int) -> tuple[int, int]:
    """(RSS bytes, live tensors): the last stretch's peak minus the first stretch's."""

    def peak(samples: dict[int, int], low: int, high: int) -> int:
        return max(v for k, v in samples.items() if low < k <= high)

    first, last = (25, 25 + STRETCH), (iterations - STRETCH, iterations)
    return (
        peak(probe.rss, *last) - peak(probe.rss, *first),
        peak(probe.tensors, *last) - peak(probe.tensors, *first),
    )


def run(tmp_path: Path, name: str, iterations: int = ITERATIONS, leak: bool = False) -> TaskFamily:
    probe = measured(family(name), iterations, leak)
    config = resolve_config(
        probe, {**CHEAP.get(name, {}), "iterations": iterations + 1, "out": str(tmp_path)}
    )
    train(probe, config, progress=False)
    return probe


@pytest.mark.parametrize("name", ["sine", pytest.param("mdp", marks=pytest.mark.slow)])
def test_memory_is_flat_across_iterations(tmp_path: Path, name: str) -> None:
    probe = run(tmp_path, name)
    assert len(probe.rss) == ITERATIONS + 1 and len(probe.tensors) == 4
    rss, tensors = growth(probe, ITERATIONS)
    assert tensors <= 0, f"{tensors} more live tensors after {ITERATIONS} iterations"
    assert rss < 4 * 2**20, f"resident memory grew by {rss / 2**20:.1f} MiB"


def test_the_probe_sees_a_leak(tmp_path: Path) -> None:
    probe = run(tmp_path, "sine", iterations=200, leak=True)
    _, tensors = growth(probe, 200)
    assert tensors >= 50  # one loss (and its graph) kept per iteration
