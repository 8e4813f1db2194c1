"""Progress of a run, on a terminal and off it (a log file, ``nohup``, a cluster job).

On a terminal the training loop shows a tqdm bar, and so does every long loop wrapped in
`with_progress` (the supervised baseline's training). Off a terminal a bar would print nothing
useful until the end, so [`ProgressLog`][metaopt.training.ProgressLog] writes one line every
``every`` iterations or ``seconds`` seconds, whichever comes first, with the iteration, the mean
losses, the rate and the time left (ETA), and `with_progress` does the same for other loops.

Lines go through the standard `logging` logger ``metaopt.progress`` at level ``INFO``, so a
library user chooses where they go (``logging.basicConfig(level=logging.INFO)``); the ``metaopt``
command sends them to stderr (`progress_to_stderr`) unless ``--quiet``. A quiet logger
also hides the bars of `with_progress`, so ``--quiet`` silences the baseline and the evaluation as
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
    "StepProgress",
    "compile_notice",
    "format_duration",
    "format_rate",
    "progress_to_stderr",
    "restart_rate",
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
    the ETA is the iterations left divided by it. Where the first iteration compiles (the compiled
    engine), a line says so before it, its own line gives the compile's time instead of a rate, and
    the rate counts from the iteration after it.

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
        self._compiling = False  # the first iteration compiles (compile_notice)

    def on_iteration_start(self, iteration: int, algo: MetaLearner) -> None:
        if self._first is None:
            self._first, self._began = iteration, time.perf_counter()
            notice = compile_notice(algo)
            if notice is not None:
                self._compiling = True
                LOGGER.info("%s: %s", self.label, notice)

    def on_iteration_end(self, iteration: int, row: Mapping[str, Any]) -> None:
        now = time.perf_counter()
        if self._compiling:  # the rate and the ETA count from the end of the compiling call
            self._compiling = False
            self._last_line, self._last_iteration = now, iteration
            LOGGER.info(
                "%s iteration %d/%d (%d%%): %s; compiled in %s",
                self.label,
                iteration,
                self.total,
                100 * iteration // max(self.total, 1),
                _losses(row),
                format_duration(now - self._began),
            )
            self._first, self._began = iteration + 1, now
            return
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


#: Seconds of the compiled engine's first call with inductor's cache warm (the same graphs compiled
#: before on this machine) and with an empty one: the first iteration of ``metaopt train sine
#: --preset maml --compile`` on the 2-core development machine, shared with other jobs, took 7 and
#: 19 s warm, 54 and 67 s with ``TORCHINDUCTOR_CACHE_DIR`` a new directory.
COMPILE_SECONDS = {"warm": 10, "cold": 60}


def compile_notice(algo: Any) -> str | None:
    """What to say before ``algo``'s next meta-iteration if it compiles (the compiled engine's first
    call: tracing and code generation, a pause of seconds to minutes), else None."""
    if getattr(algo, "engine", None) != "compiled":
        return None
    from metaopt.compiled import engine_of

    if engine_of(algo):  # compiled already, in this process
        return None
    return (
        f"compiling (first call; about {COMPILE_SECONDS['warm']} s if it compiled before on this "
        f"machine, about {COMPILE_SECONDS['cold']} s the first time, on 2 CPU cores; not counted "
        "in the rate)"
    )


def restart_rate(bar: Any) -> None:
    """Start a tqdm ``bar``'s rate and ETA afresh from its current count (after a compile)."""
    done = bar.n
    bar.reset()  # the clock and the rate's running averages
    bar.n = bar.last_print_n = bar.initial = done
    bar.refresh()


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


class StepProgress:
    """Progress of a loop of ``total`` long steps (``metaopt compare``'s points, ``bench``'s cases,
    ``scale``'s runs), shown as training shows its iterations.

    On a terminal, a tqdm bar whose postfix names the last step done (lines the loop prints go
    above it: ``printer``); off it (a log file, ``nohup``, a cluster job), a line when the loop
    starts, after the first and the last step, and after every tenth of the steps or ``seconds``
    seconds between, through training's logger (``LOGGER``). A line reads ``bench:
    part 3/9 (33%): sine-maml-5step; 41.2 s/part, ETA 4m07s``: the steps done, what the last one
    was, the rate since the loop started and the time left at that rate.

    Use it as a context manager (the bar is closed on the way out).

    Args:
        desc: What runs, e.g. ``"bench"`` (the command prefixes its lines with ``metaopt:``).
        total: Steps in the loop.
        unit: What one step is (``"case"``, ``"run"``).
        show: ``None`` (default): the bar on a terminal where progress is wanted
            (``show_bars()``), lines otherwise; ``True``: the bar; ``False``: nothing.
        seconds: Off a terminal, at most this many seconds between two lines.
        lazy: Show nothing until the first step is done (a loop that may have no steps: the
            rows against the exact meta-gradient, which only some families compute).
    """

    def __init__(
        self,
        desc: str,
        total: int,
        *,
        unit: str = "step",
        show: bool | None = None,
        seconds: float = SECONDS,
        lazy: bool = False,
    ) -> None:
        self.desc, self.total, self.unit, self.seconds = desc, total, unit, seconds
        self.every = max(1, math.ceil(total * FRACTION))
        self.done = 0
        self.lines = show is None and not show_bars()
        self._wants_bar = bool(show or (show is None and not self.lines))
        self._bar: Any = None
        self._began = self._last_line = time.perf_counter()
        self._last_done = 0
        self._shown = False
        if not lazy:
            self._show()

    def _show(self) -> None:
        """The bar, or the line that announces the loop."""
        self._shown = True
        if self._wants_bar:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=self.total, desc=self.desc, unit=self.unit)
            # a lazy bar's clock starts with the loop, not at the first step
            self._bar.start_t -= time.perf_counter() - self._began
        if self.lines:
            plural = "" if self.total == 1 else "s"
            LOGGER.info("%s: %d %s%s", self.desc, self.total, self.unit, plural)

    def __enter__(self) -> StepProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()

    def update(self, note: str = "") -> None:
        """One more step done; ``note`` says which (the bar's postfix, the line's middle)."""
        if not self._shown:
            self._show()
        self.done += 1
        if self._bar is not None:
            if note:
                self._bar.set_postfix_str(note, refresh=False)
            self._bar.update()
        if not self.lines:
            return
        now = time.perf_counter()
        due = (
            self.done in (1, self.total)
            or self.done - self._last_done >= self.every
            or now - self._last_line >= self.seconds
        )
        if not due:
            return
        self._last_line, self._last_done = now, self.done
        rate = self.done / max(now - self._began, 1e-9)
        LOGGER.info(
            "%s: %s %d/%d (%d%%)%s; %s, ETA %s",
            self.desc,
            self.unit,
            self.done,
            self.total,
            100 * self.done // max(self.total, 1),
            f": {note}" if note else "",
            format_rate(rate, self.unit),
            format_duration((self.total - self.done) / rate),
        )

    def printer(self, echo: Callable[[str], None]) -> Callable[[str], None]:
        """``echo``, printing above the bar where there is one (so the bar is not torn)."""
        if self._bar is None:
            return echo

        def above(line: str) -> None:
            with self._bar.external_write_mode():
                echo(line)

        return above


def format_rate(rate: float, unit: str) -> str:
    """``2.31 runs/s`` from one step a second up, ``41.2 s/run`` below: a slow loop's rate
    reads as the time per step."""
    if rate >= 1:
        return f"{rate:.3g} {unit}s/s"
    return f"{1 / rate:.3g} s/{unit}" if rate > 0 else f"? s/{unit}"


@contextmanager
def progress_to_stderr(quiet: bool = False) -> Iterator[None]:
    """Within the block, progress lines go to stderr as ``metaopt: ...`` (none when ``quiet``,
    which also hides `with_progress`' bars); the logger is put back as it was after."""
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
