"""Ctrl-C (a real SIGINT to a real `metaopt train`) outside the training loop: while the command
starts, and during the final evaluation. One line, status 130, and what to do next."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _start(*args: str) -> subprocess.Popen[str]:
    """``python -m metaopt ARGS`` with SIGINT at its default: a test run started in the background
    by a non-interactive shell ignores SIGINT, and its children would inherit that."""
    command = [sys.executable, "-m", "metaopt", *args]
    return subprocess.Popen(command, stderr=subprocess.PIPE, text=True, preexec_fn=_default_sigint)


def _loading_torch(pid: int) -> bool:
    """Whether the process has begun to load torch's shared library (its import is under way)."""
    try:
        return "libtorch" in Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return False


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs /proc")
def test_ctrl_c_while_the_command_starts_is_one_line_and_status_130(tmp_path: Path) -> None:
    process = _start("train", "sine", "--iterations", "100000", "--out", str(tmp_path / "run"))
    deadline = time.time() + 60
    while not _loading_torch(process.pid):  # interrupt the import of torch, the first seconds
        assert process.poll() is None and time.time() < deadline
        time.sleep(0.005)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr
    assert stderr.strip().splitlines()[-1].startswith("metaopt: interrupted"), stderr
    assert len(stderr.strip().splitlines()) == 1, stderr


def test_ctrl_c_during_the_final_evaluation_says_how_to_get_eval_json(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    # A long baseline training: the final evaluation lasts long enough to be interrupted.
    process = _start(
        "train", "sine", "--iterations", "2", "--eval-tasks", "10", "--baseline-steps",
        "1000000", "--out", str(run_dir),
    )  # fmt: skip
    assert process.stderr is not None
    seen = []
    for line in process.stderr:  # off a terminal, progress is logged line by line
        seen.append(line)
        if "evaluating on held-out tasks" in line:
            break
    else:
        pytest.fail("".join(seen))
    time.sleep(0.5)
    process.send_signal(signal.SIGINT)
    _, rest = process.communicate(timeout=60)
    stderr = "".join(seen) + rest
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr, stderr
    last = stderr.strip().splitlines()[-1]
    assert "during the final evaluation" in last and f"metaopt eval {run_dir}" in last, stderr
    assert (run_dir / "checkpoint.pt").is_file() and not (run_dir / "eval.json").exists()
