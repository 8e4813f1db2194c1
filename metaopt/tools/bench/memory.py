"""Peak memory of a meta-iteration, read from torch's profiler, and the sweep over inner steps."""

from __future__ import annotations

import contextlib
import itertools
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from metaopt.tools.bench.cases import MemorySweep

__all__ = ["memory_sweep", "peak_memory_bytes", "plot_memory", "sweep_table"]


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Silence file descriptor 2: the profiler's C++ layer logs every start and stop there."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def peak_memory_bytes(fn: Callable[[], Any]) -> int:
    """Peak bytes allocated by torch's CPU allocator while ``fn`` runs, above what was live before.

    Read from the profiler's allocation and free events (``profile_memory=True``): each operator's
    own allocations minus frees, and the profiler's separate free events, summed in time order.
    """
    from torch.profiler import ProfilerActivity, profile

    with _quiet_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    deltas = []
    for event in prof.events():
        delta = event.cpu_memory_usage if event.name == "[memory]" else event.self_cpu_memory_usage
        if delta:
            deltas.append((event.time_range.start, delta))
    deltas.sort(key=lambda item: item[0])
    live = peak = 0
    for _, delta in deltas:
        live += delta
        peak = max(peak, live)
    return peak


def memory_sweep(sweep: MemorySweep, steps: Sequence[int]) -> list[dict[str, Any]]:
    """Peak memory of one meta-iteration of each of the sweep's algorithms at each inner-step
    count, after one warm-up iteration (one-off allocations are not the iteration's)."""
    records = []
    for k in steps:
        for name, run in sweep.iterations(k).items():
            run()
            records.append(
                {
                    "case": f"memory-{sweep.name}-{name}",
                    "impl": "metaopt-vmap",
                    "inner_steps": k,
                    "peak_bytes": peak_memory_bytes(run),
                }
            )
    return records


def sweep_table(sweep: MemorySweep, records: Sequence[dict[str, Any]]) -> dict[str, list[int]]:
    """Algorithm -> peak bytes in inner-step order, from `memory_sweep`'s records."""
    prefix = f"memory-{sweep.name}-"
    table: dict[str, list[int]] = {}
    for record in records:
        if record["case"].startswith(prefix):
            table.setdefault(record["case"][len(prefix) :], []).append(record["peak_bytes"])
    return table


def plot_memory(
    sweep: MemorySweep, steps: Sequence[int], records: Sequence[dict[str, Any]], path: Path
) -> Path:
    """Peak MiB against inner steps, one line per algorithm of the sweep."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    styles = itertools.cycle([("o", "-"), ("s", "--"), ("^", ":"), ("D", "-.")])
    for (algo, peaks), (marker, line) in zip(
        sweep_table(sweep, records).items(), styles, strict=False
    ):
        mib = [peak / 2**20 for peak in peaks]
        ax.plot(steps, mib, marker=marker, linestyle=line, label=algo)
    ax.set_xlabel("inner steps")
    ax.set_ylabel("peak memory of one meta-iteration (MiB)")
    ax.set_title(sweep.title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
