"""One process owns a run directory at a time.

A run (``metaopt train``, ``--resume``) and an evaluation (``metaopt eval``) hold an exclusive
``flock`` on ``<run_dir>/.lock`` for as long as they touch the directory. The kernel releases the
lock when its process ends, however it ends (``kill -9`` included), so a stale lock never blocks;
the file itself stays behind, holding the last owner's pid for the message a second process
prints. Under ``torchrun`` only rank 0 writes the directory, so only rank 0 locks it.

``flock`` locks are advisory and local: two machines sharing a run directory over NFS are not
kept apart (NFS emulates ``flock`` with byte-range locks only on some configurations).
"""

from __future__ import annotations

import fcntl
import os
import time
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

__all__ = ["LOCK_FILE", "RunDirectoryLocked", "RunLock", "lock_run_dir"]

LOCK_FILE = ".lock"
#: Reads of the holder's pid, 10 ms apart, before the message says "another process".
PID_WAIT_TRIES = 100


class RunDirectoryLocked(RuntimeError):
    """Another process holds the run directory's lock."""

    def __init__(self, run_dir: Path, holder: int | None) -> None:
        self.run_dir = run_dir
        self.holder = holder
        who = f"process {holder}" if holder is not None else "another process"
        super().__init__(
            f"{run_dir} is in use by {who} (a run, a resume or an evaluation); wait for it to "
            "finish, or stop it, and try again"
        )


class RunLock:
    """The exclusive lock on ``run_dir``; a context manager, also usable with acquire/release."""

    def __init__(self, run_dir: Path | str) -> None:
        self.run_dir = Path(run_dir)
        self._fd: int | None = None

    @property
    def path(self) -> Path:
        return self.run_dir / LOCK_FILE

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> RunLock:
        """Take the lock at once or raise `RunDirectoryLocked` naming the holder's pid."""
        if self._fd is not None:
            return self
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            # The holder writes its pid just after taking the lock: give it a moment to.
            holder = _read_pid(fd)
            for _ in range(PID_WAIT_TRIES):
                if holder is not None:
                    break
                time.sleep(0.01)
                holder = _read_pid(fd)
            os.close(fd)
            raise RunDirectoryLocked(self.run_dir, holder) from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc_info: object) -> None:
        self.release()


def lock_run_dir(run_dir: Path | str) -> AbstractContextManager[RunLock | None]:
    """The lock this process takes on ``run_dir``: rank 0 (or a process outside torchrun) locks
    it, the other ranks of a torchrun job, which never write there, do not (``RANK`` is set by
    torchrun before any process group exists)."""
    if os.environ.get("RANK", "0") != "0":
        return nullcontext()
    return RunLock(run_dir)


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode().strip()
        return int(text) if text else None
    except (OSError, ValueError):
        return None
