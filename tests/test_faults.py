"""Faults a run directory must survive, with real processes and real signals (docs/reliability.md)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from metaopt.training.lock import LOCK_FILE, RunDirectoryLocked, RunLock

HOLD = """
import sys, time
from metaopt.training.lock import RunLock
lock = RunLock(sys.argv[1]).acquire()
print("locked", flush=True)
time.sleep(60)
"""


def _holder(run_dir: Path) -> subprocess.Popen[str]:
    process = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(run_dir)], stdout=subprocess.PIPE, text=True
    )
    assert process.stdout is not None
    assert process.stdout.readline().strip() == "locked"
    return process


def test_a_second_owner_is_refused_naming_the_holder(tmp_path: Path) -> None:
    holder = _holder(tmp_path)
    try:
        with pytest.raises(RunDirectoryLocked, match=rf"in use by process {holder.pid}") as caught:
            RunLock(tmp_path).acquire()
        assert caught.value.holder == holder.pid
        assert str(tmp_path) in str(caught.value)
    finally:
        holder.kill()
        holder.wait()


def test_a_lock_dies_with_its_process(tmp_path: Path) -> None:
    holder = _holder(tmp_path)
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    assert (tmp_path / LOCK_FILE).exists()  # the file stays; the lock does not
    start = time.perf_counter()
    with RunLock(tmp_path) as lock:
        assert lock.held
        assert (tmp_path / LOCK_FILE).read_text().strip() == str(os.getpid())
    assert time.perf_counter() - start < 1.0
    assert not lock.held


def test_release_lets_the_next_owner_in(tmp_path: Path) -> None:
    first = RunLock(tmp_path).acquire()
    with pytest.raises(RunDirectoryLocked):
        RunLock(tmp_path).acquire()  # another open file description: refused, same process too
    first.release()
    RunLock(tmp_path).acquire().release()
