"""Size flags bounded before anything is allocated: an estimate of a meta-iteration's memory.

A flag such as ``--meta-batch 10000000`` or ``--hidden 100000000`` would otherwise allocate until
the machine swaps or the allocator fails with a traceback. `check_memory` estimates the
bytes one meta-iteration needs ([`estimate_memory`][metaopt.training.TaskFamily.estimate_memory],
with the model built on PyTorch's ``meta`` device, which allocates nothing) and refuses the config
when it exceeds ``--max-memory`` GiB, or by default the memory available now (``MemAvailable`` of
``/proc/meminfo``). The refusal names the flag whose return to its default lowers the estimate
most, so the user knows which one to change; it takes milliseconds.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from metaopt.training.family import ConfigError, TaskFamily, TrainConfig, flag

__all__ = ["GIB", "available_memory", "check_memory"]

GIB = 2**30


def available_memory() -> int | None:
    """Bytes of memory available to a new allocation now (``MemAvailable``), or None if unknown."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, AttributeError):
        return None


def check_memory(family: TaskFamily, config: TrainConfig) -> None:
    """Refuse ``config`` when one meta-iteration's estimated memory exceeds the bound.

    Raises:
        ConfigError: naming the size flag to lower, the estimate and the bound.
    """
    needed = family.estimate_memory(config)
    if needed is None:
        return
    if config.max_memory > 0:
        bound, source = int(config.max_memory * GIB), f"--max-memory {config.max_memory:g}"
    else:
        available = available_memory()
        if available is None:
            return
        bound, source = available, "the memory available"
    if needed <= bound:
        return
    culprit = _largest_size_flag(family, config, needed)
    named = f"{flag(culprit)} {getattr(config, culprit)}" if culprit else "the size flags"
    raise ConfigError(
        f"{named}: one meta-iteration needs an estimated {needed / GIB:.3g} GiB, more than "
        f"{source} ({bound / GIB:.3g} GiB); lower {named.split()[0]} or another size flag, or "
        "raise the bound with --max-memory GIB"
    )


def _largest_size_flag(family: TaskFamily, config: TrainConfig, needed: int) -> str | None:
    """The integer field whose return to its default lowers the estimate the most."""
    best, lowest = None, needed
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        if (
            not isinstance(value, int)
            or isinstance(value, bool)
            or not isinstance(field.default, int)
            or value <= field.default
        ):
            continue
        at_default: dict[str, Any] = {field.name: field.default}
        estimate = family.estimate_memory(dataclasses.replace(config, **at_default))
        if estimate is not None and estimate < lowest:
            best, lowest = field.name, estimate
    return best
