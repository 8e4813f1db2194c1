"""Progress of a run, on a terminal and off it (a log file, ``nohup``, a cluster job).

On a terminal the training loop shows a tqdm bar, and so does every long loop wrapped in
:func:`with_progress` (the supervised baseline's training). Off a terminal a bar would print nothing
useful until the end, so :class:`ProgressLog` writes one line every ``every`` iterations or
``seconds`` seconds, whichever comes first, with the iteration, the mean losses, the rate and the
time left (ETA), and :func:`with_progress` does the same for other loops.

Lines go through the standard :mod:`logging` logger ``metaopt.progress`` at level ``INFO``, so a
library user chooses where they go (``logging.basicConfig(level=logging.INFO)``); the ``metaopt``
command sends them to stderr (:func:`progress_to_stderr`) unless ``--quiet``. A quiet logger
also hides the bars of :func:`with_progress`, so ``--quiet`` silences the baseline and the evaluation as
well as training.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, TypeVar

from metaopt.algorithms import MetaLearner
from metaopt.training.hooks import TrainingHooks

__all__ = [
    "LOGGER",
    "ProgressLog",
    "format_duration",
    "progress_to_stderr",
    "show_bars",
    "with_progress",
]

#: The logger of progress lines (level INFO).
LOGGER = logging.getLogger("metaopt.progress")

#: Off a terminal, at most this many seconds between two lines (a cluster job's log shows life).
SECONDS = 60.0

#: Off a terminal, a line every this fraction of the run's iterations.
FRACTION = 0.1

T = TypeVar("T")


def format_duration(seconds: float) -> str:
    """``4s``, ``3m05s``, ``2h07m``: short enough for a log line."""
    if not math.isfinite(seconds):
        return "?"
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def show_bars() -> bool:
    """A tqdm bar only on a terminal, and only when progress is wanted: not when the logger's own
    level is above INFO (``--quiet``); a level left unset does not hide bars."""
    return sys.stderr.isatty() and LOGGER.level <= logging.INFO


class ProgressLog(TrainingHooks):
    """One progress line every ``every`` iterations or ``seconds`` seconds (the loop adds it when
    stderr is not a terminal), and one at the first and the last iteration.

    A line reads ``sine/maml iteration 50/500 (10%): query 0.412, support 1.23 -> 0.51;
    2.31 it/s, ETA 3m15s``. The rate is iterations per wall-clock second since this process
    started training (hooks and periodic evaluation included, as they are in the time left);
    the ETA is the iterations left divided by it.

    Args:
        label: What is trained, e.g. ``"sine/maml"``.
        total: The run's last iteration.
        every: Iterations between lines (default: a tenth of ``total``, at least 1).
        seconds: At most this many seconds between lines.
        describe: What the line says of a row instead of the losses, when it returns a text
            (the family's `progress_text`: an RL family gives the returns).
    """

    def __init__(
        self,
        label: str,
        total: int,
        *,
        every: int | None = None,
        seconds: float = SECONDS,
        describe: Callable[[Mapping[str, Any]], str | None] | None = None,
    ) -> None:
        if every is not None and every < 1:
            raise ValueError(f"every must be an integer >= 1 or None, got {every}")
        if not seconds > 0:
            raise ValueError(f"seconds must be > 0, got {seconds}")
        self.label = label
        self.total = total
        self.every = every if every is not None else max(1, math.ceil(total * FRACTION))
        self.seconds = seconds
        self.describe = describe
        self._first: int | None = None  # the first iteration this process trains
        self._began = 0.0
        self._last_line = -math.inf  # time of the last line
        self._last_iteration = 0

    def on_iteration_start(self, iteration: int, algo: MetaLearner) -> None:
        if self._first is None:
            self._first, self._began = iteration, time.perf_counter()

    def on_iteration_end(self, iteration: int, row: Mapping[str, Any]) -> None:
        now = time.perf_counter()
        due = (
            iteration == self._first
            or iteration == self.total
            or iteration - self._last_iteration >= self.every
            or now - self._last_line >= self.seconds
        )
        if not due:
            return
        self._last_line, self._last_iteration = now, iteration
        done = iteration - (self._first if self._first is not None else iteration) + 1
        rate = done / max(now - self._began, 1e-9)
        LOGGER.info(
            "%s iteration %d/%d (%d%%): %s; %.3g it/s, ETA %s",
            self.label,
            iteration,
            self.total,
            100 * iteration // max(self.total, 1),
            (self.describe(row) if self.describe else None) or _losses(row),
            rate,
            format_duration((self.total - iteration) / rate),
        )


def _losses(row: Mapping[str, Any]) -> str:
    def number(key: str) -> str:
        value = row.get(key)
        return "not finite" if value is None else f"{value:.4g}"

    return f"query {number('query')}, support {number('support_before')} -> " + number(
        "support_after"
    )


def with_progress(
    iterable: Iterable[T], *, total: int, desc: str, seconds: float = SECONDS
) -> Iterator[T]:
    """``iterable`` with progress: a tqdm bar on a terminal; off it, a line at the start and then
    at most every ``seconds`` seconds with the step, the rate and the ETA."""
    if show_bars():
        from tqdm.auto import tqdm

        yield from tqdm(iterable, total=total, desc=desc)
        return
    began = last = time.perf_counter()
    LOGGER.info("%s: %d steps", desc, total)
    for done, item in enumerate(iterable, start=1):
        yield item
        now = time.perf_counter()
        if now - last >= seconds and done < total:
            last = now
            rate = done / max(now - began, 1e-9)
            LOGGER.info(
                "%s: step %d/%d; %.3g steps/s, ETA %s",
                desc,
                done,
                total,
                rate,
                format_duration((total - done) / rate),
            )


@contextmanager
def progress_to_stderr(quiet: bool = False) -> Iterator[None]:
    """Within the block, progress lines go to stderr as ``metaopt: ...`` (none when ``quiet``,
    which also hides :func:`with_progress`' bars); the logger is put back as it was after."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("metaopt: %(message)s"))
    saved = LOGGER.level, LOGGER.propagate
    LOGGER.setLevel(logging.WARNING if quiet else logging.INFO)
    LOGGER.propagate = False
    LOGGER.addHandler(handler)
    try:
        yield
    finally:
        LOGGER.removeHandler(handler)
        LOGGER.setLevel(saved[0])
        LOGGER.propagate = saved[1]
