"""SIGINT and SIGTERM during training: finish the iteration under way, save it, stop.

The first signal is noted; after the iteration under way the loop saves a checkpoint and raises
[`TrainingInterrupted`][metaopt.training.TrainingInterrupted], from which
[`resume`][metaopt.training.resume] continues. A second signal raises at once, saving nothing. Under
torchrun every rank stops after the same iteration.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from metaopt.training import distributed
from metaopt.training.state import Run, save

__all__ = ["StopOnSignal", "TrainingInterrupted"]


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped on SIGINT or SIGTERM.

    After the first signal the loop finishes the iteration under way, saves it and raises this
    (``checkpoint`` is the file written); a second signal raises it at once, saving nothing
    (``checkpoint`` is the latest one on disk, or ``None``). ``exit_status`` is the shell's
    ``128 + signal number``: 130 for SIGINT, 143 for SIGTERM.
    """

    def __init__(
        self, message: str, *, signum: int, iteration: int, checkpoint: Path | None
    ) -> None:
        super().__init__(message)
        self.signum = signum
        self.iteration = iteration
        self.checkpoint = checkpoint

    @property
    def exit_status(self) -> int:
        """The shell's convention for a process ended by a signal: 128 + its number."""
        return 128 + self.signum


class StopOnSignal:
    """SIGINT/SIGTERM: note the first, so the loop stops after the iteration under way; a second
    one interrupts at once. Installed only in the main thread (the only one Python signals reach).
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, run: Run) -> None:
        self.run = run
        self.signum: int | None = None

    def __call__(self, signum: int, frame: object) -> None:
        if self.signum is None:
            self.signum = signum
            return
        run = self.run
        latest = (
            f"the latest checkpoint is iteration {run.saved} ({run.checkpoint})"
            if run.saved is not None
            else "no checkpoint was saved yet"
        )
        raise TrainingInterrupted(
            f"interrupted again by {signal.Signals(signum).name} during iteration "
            f"{run.iteration + 1}; stopped without saving it: {latest}",
            signum=signum,
            iteration=run.iteration,
            checkpoint=run.checkpoint if run.saved is not None else None,
        )

    @contextmanager
    def installed(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {s: signal.signal(s, self) for s in self.SIGNALS}
        try:
            yield
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler if handler is not None else signal.SIG_DFL)

    def stop_if_asked(self, log: IO[str]) -> None:
        """Save and raise [`TrainingInterrupted`][metaopt.training.TrainingInterrupted] if a signal
        came (on any rank)."""
        run = self.run
        # Under torchrun every rank must stop after the same iteration, or the others would wait
        # in the next collective for one that has left.
        if not distributed.any_rank(self.signum is not None, run.dist):
            return
        signum = self.signum if self.signum is not None else signal.SIGTERM
        if run.saved != run.iteration:
            save(run, log=log)
        name = signal.Signals(signum).name
        raise TrainingInterrupted(
            f"interrupted by {name} after iteration {run.iteration}; checkpoint saved in "
            f"{run.checkpoint}; continue with: metaopt train {run.family.name} "
            f"--resume {run.run_dir}",
            signum=signum,
            iteration=run.iteration,
            checkpoint=run.checkpoint,
        )
