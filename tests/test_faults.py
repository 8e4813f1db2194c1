"""Faults a run directory must survive, with real processes and real signals (docs/reliability.md)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from metaopt.training import ConfigError
from metaopt.training.checkpoint import load_checkpoint
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


SLOW_PID = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1] + "/.lock", os.O_RDWR | os.O_CREAT, 0o644)
fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
print("locked", flush=True)
time.sleep(0.3)  # a holder caught between taking the lock and writing its pid
os.write(fd, f"{os.getpid()}\\n".encode())
time.sleep(60)
"""


def test_a_holder_that_has_not_written_its_pid_yet_is_still_named(tmp_path: Path) -> None:
    process = subprocess.Popen(
        [sys.executable, "-c", SLOW_PID, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert process.stdout is not None and process.stdout.readline().strip() == "locked"
        with pytest.raises(RunDirectoryLocked, match=rf"in use by process {process.pid}"):
            RunLock(tmp_path).acquire()
    finally:
        process.kill()
        process.wait()


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


# -- the command, in real subprocesses ------------------------------------------------------------

QUICK = ["--iterations", "12", "--eval-tasks", "10", "--baseline-steps", "1", "--quiet"]


def _metaopt(*args: str, timeout: float = 120, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "metaopt", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        **kwargs,
    )


def _start(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "metaopt", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _one_line_error(result: subprocess.CompletedProcess[str] | tuple[int, str]) -> str:
    code, stderr = (result.returncode, result.stderr) if not isinstance(result, tuple) else result
    assert code == 2, stderr
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.startswith("metaopt: error:")]
    assert len(lines) == 1, stderr
    return lines[0]


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished sine run with a checkpoint every iteration (copied by the tests that alter it)."""
    run_dir = tmp_path_factory.mktemp("finished") / "run"
    result = _metaopt("train", "sine", *QUICK, "--checkpoint-every", "1", "--out", str(run_dir))
    assert result.returncode == 0, result.stderr
    return run_dir


def _back_to_the_previous_checkpoint(run_dir: Path) -> None:
    (run_dir / "checkpoint.pt").unlink()
    os.replace(run_dir / "checkpoint.prev.pt", run_dir / "checkpoint.pt")


def _copy(run_dir: Path, tmp_path: Path) -> Path:
    target = tmp_path / "copy"
    shutil.copytree(run_dir, target)
    return target


def test_two_runs_started_on_one_directory_give_one_run(tmp_path: Path) -> None:
    out = tmp_path / "run"
    first = _start("train", "sine", *QUICK, "--seed", "1", "--out", str(out))
    second = _start("train", "sine", *QUICK, "--seed", "2", "--out", str(out))
    results = [(p.wait(timeout=120), p.communicate()[1]) for p in (first, second)]
    assert sorted(code for code, _ in results) == [0, 2], results
    refused = next(r for r in results if r[0] == 2)
    assert re.search(r"in use by process \d+|is not empty", _one_line_error(refused))
    winner = 1 if results[0][0] == 0 else 2
    config = json.loads((out / "config.json").read_text())
    assert config["seed"] == winner
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [row["iteration"] for row in rows] == list(range(1, 13))


def test_a_locked_directory_refuses_resume_and_eval_naming_the_holder(tmp_path: Path) -> None:
    run_dir = tmp_path  # a run directory: the lock is taken before its files are read
    (run_dir / "config.json").write_text("{}")
    holder = _holder(run_dir)
    try:
        for args in (["train", "sine", "--resume", str(run_dir)], ["eval", str(run_dir)]):
            start = time.perf_counter()
            line = _one_line_error(_metaopt(*args))
            assert f"in use by process {holder.pid}" in line and str(run_dir) in line
            assert time.perf_counter() - start < 30  # at once: no training, no evaluation
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.slow
def test_killed_before_the_first_checkpoint_resumes_from_the_start(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    process = _start("train", "sine", *QUICK, "--iterations", "100000", "--out", str(run_dir))
    deadline = time.time() + 60
    while (
        not (run_dir / "metrics.jsonl").exists() or not (run_dir / "metrics.jsonl").stat().st_size
    ):
        assert time.time() < deadline and process.poll() is None
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert not (run_dir / "checkpoint.pt").exists()
    stale = run_dir / ".checkpoint.pt.abc123.tmp"  # what a kill inside a write leaves
    stale.write_bytes(b"half")
    assert "is not empty" in _one_line_error(_metaopt("train", "sine", "--out", str(run_dir)))
    result = _metaopt("train", "sine", "--resume", str(run_dir), "--iterations", "12")
    assert result.returncode == 0, result.stderr
    assert "starts again from iteration 0" in result.stderr
    assert not stale.exists()
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [row["iteration"] for row in rows] == list(range(1, 13))


@pytest.mark.slow
def test_metrics_a_cut_last_line_is_dropped_a_bad_line_elsewhere_stops(
    finished: Path, tmp_path: Path
) -> None:
    run_dir = _copy(finished, tmp_path)
    _back_to_the_previous_checkpoint(run_dir)  # iteration 11 of 12
    metrics = run_dir / "metrics.jsonl"
    lines = metrics.read_text().splitlines(keepends=True)
    lines[4] = "garbage\n"
    metrics.write_text("".join(lines))
    line = _one_line_error(_metaopt("train", "sine", "--resume", str(run_dir)))
    assert "line 5 of" in line
    assert metrics.read_text() == "".join(lines)  # nothing deleted
    lines[4] = finished.joinpath("metrics.jsonl").read_text().splitlines(keepends=True)[4]
    metrics.write_text("".join(lines[:11]) + lines[11][:7])  # a kill in the middle of row 12
    result = _metaopt("train", "sine", "--resume", str(run_dir))
    assert result.returncode == 0, result.stderr
    assert "is incomplete" in result.stderr
    after = metrics.read_text().splitlines(keepends=True)
    assert after[:11] == lines[:11]  # the rows before the checkpoint, kept as they were
    assert [json.loads(line)["iteration"] for line in after] == list(range(1, 13))


@pytest.mark.slow
def test_eval_refuses_a_foreign_checkpoint_and_a_damaged_config(
    finished: Path, tmp_path: Path
) -> None:
    other = tmp_path / "other"
    result = _metaopt("train", "sine", *QUICK, "--seed", "7", "--out", str(other))
    assert result.returncode == 0, result.stderr
    run_dir = _copy(finished, tmp_path)
    before = (run_dir / "eval.json").read_bytes()
    shutil.copy(other / "checkpoint.pt", run_dir / "checkpoint.pt")
    line = _one_line_error(_metaopt("eval", str(run_dir)))
    assert "--seed 7" in line and "belongs to another run" in line
    assert (run_dir / "eval.json").read_bytes() == before
    config = json.loads((run_dir / "config.json").read_text())
    config["config"] = list(config["config"])
    (run_dir / "config.json").write_text(json.dumps(config))
    for args in (["eval", str(run_dir)], ["train", "sine", "--resume", str(run_dir)]):
        assert "'config' an object" in _one_line_error(_metaopt(*args))


@pytest.mark.slow
def test_an_unreadable_baseline_cache_is_rebuilt(finished: Path, tmp_path: Path) -> None:
    run_dir = _copy(finished, tmp_path)
    (run_dir / "baseline.pt").write_bytes(b"")  # what a kill during torch.save used to leave
    result = _metaopt("eval", str(run_dir), "--tasks", "5")
    assert result.returncode == 0, result.stderr
    assert (run_dir / "baseline.pt").stat().st_size > 0


def test_huge_sizes_are_refused_at_once_naming_the_flag(tmp_path: Path) -> None:
    from metaopt.training.config import resolve_config
    from metaopt.training.memory import check_memory
    from metaopt.training.registry import get_family

    family = get_family("sine")
    for flag, value in (("meta_batch", 10_000_000), ("hidden", 100_000_000), ("shots", 10**9)):
        config = resolve_config(family, {flag: value})
        start = time.perf_counter()
        with pytest.raises(ConfigError, match=rf"--{flag.replace('_', '-')} {value}: .* GiB"):
            check_memory(family, config)
        assert time.perf_counter() - start < 1.0
    config = resolve_config(family, {"meta_batch": 100_000, "max_memory": 1e9})
    check_memory(family, config)  # --max-memory lifts the bound
    line = _one_line_error(
        _metaopt("train", "sine", "--hidden", "100000000", "--out", str(tmp_path / "r"))
    )
    assert "--hidden 100000000" in line and "--max-memory" in line
    assert not (tmp_path / "r").exists()  # refused before anything was made


def _tmpfs(path: Path, size: str) -> None:
    path.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)])
    if mounted.returncode != 0:
        pytest.skip("this machine does not allow mounting a tmpfs")


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    disk = tmp_path / "disk"
    _tmpfs(disk, "200k")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def test_a_full_disk_is_one_line_and_leaves_complete_files(small_disk: Path) -> None:
    run_dir = small_disk / "run"
    result = _metaopt("train", "sine", *QUICK, "--checkpoint-every", "1", "--out", str(run_dir))
    line = _one_line_error(result)
    assert "No space left on device (ENOSPC)" in line
    _assert_complete(run_dir)


def _assert_complete(run_dir: Path, *, temporaries: bool = False) -> None:
    """Every file of ``run_dir`` is complete (or absent); no temporary is left unless
    ``temporaries`` (a killed process's, which the next run removes)."""
    for path in run_dir.iterdir():
        if path.name.endswith(".tmp"):
            assert temporaries, path
        elif path.suffix == ".json":
            json.loads(path.read_text())
        elif path.name.startswith("checkpoint"):
            load_checkpoint(path)
        elif path.suffix == ".png":
            assert path.read_bytes().endswith(b"IEND\xaeB`\x82"), path
        elif path.name == "baseline.pt":
            torch.load(path, weights_only=True)
        elif path.name == "metrics.jsonl":
            lines = path.read_text().splitlines(keepends=True)
            for line in lines[:-1]:
                json.loads(line)


def test_two_threads_on_one_learner(tmp_path: Path) -> None:
    import metaopt
    from metaopt import testing as mt

    tasks = mt.random_linear_tasks(8, 3, np.random.default_rng(0))
    model = mt.LinearModel(np.zeros(3))
    algo = metaopt.Reptile(model, inner_lr=0.1, inner_steps=3)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    inside, release = threading.Event(), threading.Event()

    class Slow:
        def __init__(self, task: Any) -> None:
            self.task = task

        def support_loss(self, m: torch.nn.Module) -> torch.Tensor:
            inside.set()
            release.wait(10)
            return self.task.support_loss(m)

        def query_loss(self, m: torch.nn.Module) -> torch.Tensor:
            return self.task.query_loss(m)

    worker = threading.Thread(target=lambda: algo.meta_backward([Slow(tasks[0])]))
    worker.start()
    assert inside.wait(10)
    try:
        with pytest.raises(RuntimeError, match="another thread is using"):
            algo.meta_backward(list(tasks))
        with pytest.raises(RuntimeError, match="another thread is using"), algo.adapt(tasks[1]):
            pass
    finally:
        release.set()
        worker.join()
    for key, value in model.state_dict().items():
        assert torch.equal(value, start[key]), key  # the first call restored it; nobody else


def test_misnested_adapt_is_an_error_and_restores_the_model() -> None:
    import metaopt
    from metaopt import testing as mt

    tasks = mt.random_linear_tasks(2, 3, np.random.default_rng(0))
    model = mt.LinearModel(np.zeros(3))
    algo = metaopt.MAML(model, inner_lr=0.1, inner_steps=2)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    outer, inner = algo.adapt(tasks[0]), algo.adapt(tasks[1])
    outer.__enter__()
    inner.__enter__()
    with pytest.raises(RuntimeError, match="left out of order"):
        outer.__exit__(None, None, None)
    inner.__exit__(None, None, None)
    for key, value in model.state_dict().items():
        assert torch.equal(value, start[key]), key


@pytest.mark.parametrize("engine", ["loop", "vmap"])
def test_no_grad_is_named_and_leaves_no_gradient(engine: str) -> None:
    import metaopt
    from metaopt import testing as mt

    tasks = mt.random_linear_tasks(3, 3, np.random.default_rng(0))
    model = mt.LinearModel(np.zeros(3))
    algo = metaopt.MAML(model, inner_lr=0.1, inner_steps=1, engine=engine)
    with torch.no_grad(), pytest.raises(RuntimeError, match=r"torch.no_grad\(\)"):
        algo.meta_backward(tasks)
    assert all(p.grad is None for p in model.parameters())


def test_mixed_dtypes_name_the_task_and_leave_no_gradient() -> None:
    import metaopt

    net = torch.nn.Linear(3, 1)

    class Task:
        def __init__(self, dtype: torch.dtype) -> None:
            self.x, self.y = torch.randn(5, 3, dtype=dtype), torch.randn(5, 1, dtype=dtype)

        def support_loss(self, model: torch.nn.Module) -> torch.Tensor:
            return ((model(self.x) - self.y) ** 2).mean()

        query_loss = support_loss

    algo = metaopt.MAML(net, inner_lr=0.1, inner_steps=1, engine="loop")
    with pytest.raises(TypeError, match=r"^task 1: .*dtype"):
        algo.meta_backward([Task(torch.float32), Task(torch.float64)])
    assert all(p.grad is None for p in net.parameters())  # task 0's share was taken back


# -- kill -9 during each kind of write, and at random moments (slow) ------------------------------

HANG = """
import os, sys, time
from pathlib import Path
target, real = sys.argv[1], os.replace
def replace(source, destination, *args, **kwargs):
    if Path(destination).name == target:  # the new file is complete, not yet renamed into place
        print("writing", target, flush=True)
        time.sleep(600)
    return real(source, destination, *args, **kwargs)
os.replace = replace
from metaopt.cli import main
sys.exit(main(sys.argv[2:]))
"""


def _kill_while_writing(target: str, *args: str) -> None:
    """Run ``metaopt ARGS`` and ``kill -9`` it the moment it renames a new ``target`` into place."""
    process = subprocess.Popen(
        [sys.executable, "-c", HANG, target, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert process.stdout is not None
    for line in process.stdout:
        if line.strip() == f"writing {target}":
            break
    else:
        pytest.fail(f"metaopt {' '.join(args)} never wrote {target}")
    os.kill(process.pid, signal.SIGKILL)
    process.wait()


def _final_state(run_dir: Path) -> dict[str, Any]:
    return load_checkpoint(run_dir / "checkpoint.pt")["algorithm"]


def _assert_same_state(ours: Any, theirs: Any) -> None:
    if isinstance(ours, dict):
        assert ours.keys() == theirs.keys()
        for key in ours:
            _assert_same_state(ours[key], theirs[key])
    elif isinstance(ours, torch.Tensor):
        assert torch.equal(ours, theirs)
    else:
        assert ours == theirs


@pytest.mark.slow
@pytest.mark.parametrize(
    "target",
    [
        "config.json",
        "checkpoint.pt",
        "checkpoint.prev.pt",
        "baseline.pt",
        "eval.json",
        "training_curve.png",
        "mse_vs_steps.png",
    ],
)
def test_a_kill_during_a_write_leaves_complete_files_and_resumes_identically(
    target: str, finished: Path, tmp_path: Path
) -> None:
    run_dir = tmp_path / "run"
    args = ["train", "sine", *QUICK, "--checkpoint-every", "1"]
    _kill_while_writing(target, *args, "--out", str(run_dir))
    assert any(path.name.endswith(".tmp") for path in run_dir.iterdir())
    _assert_complete(run_dir, temporaries=True)
    if (run_dir / "config.json").exists():
        result = _metaopt("train", "sine", "--resume", str(run_dir))
    else:  # killed before config.json was in place: nothing to resume, the directory is free
        result = _metaopt(*args, "--out", str(run_dir))
    assert result.returncode == 0, result.stderr
    _assert_complete(run_dir)
    _assert_same_state(_final_state(run_dir), _final_state(finished))
    assert json.loads((run_dir / "eval.json").read_text()) == json.loads(
        (finished / "eval.json").read_text()
    )


@pytest.mark.slow
def test_a_kill_while_resume_cuts_the_metrics_loses_nothing(finished: Path, tmp_path: Path) -> None:
    run_dir = _copy(finished, tmp_path)
    _back_to_the_previous_checkpoint(run_dir)  # iteration 11 of 12
    _kill_while_writing("metrics.jsonl", "train", "sine", "--resume", str(run_dir))
    assert (run_dir / "metrics.jsonl").read_text() == (finished / "metrics.jsonl").read_text()
    result = _metaopt("train", "sine", "--resume", str(run_dir))
    assert result.returncode == 0, result.stderr
    _assert_same_state(_final_state(run_dir), _final_state(finished))


@pytest.mark.slow
def test_kill_9_at_random_moments_then_resume_is_bit_identical(
    finished: Path, tmp_path: Path
) -> None:
    run_dir = tmp_path / "run"
    args = ["train", "sine", *QUICK, "--checkpoint-every", "1"]
    # Kill moments as fractions of an uninterrupted run on this machine, so that the kills land
    # inside the run however fast the machine is (fixed seconds let a quiet machine finish first),
    # counted from the moment its run directory appears: before it, a process is still importing
    # (half of a short run), and a kill there leaves nothing to resume.
    timing = tmp_path / "timing"
    start = time.perf_counter()
    process = _start(*args, "--out", str(timing))
    while process.poll() is None and not (timing / "config.json").exists():
        time.sleep(0.005)
    created = time.perf_counter() - start
    assert process.wait() == 0
    duration = time.perf_counter() - start
    delays = created + (duration - created) * np.random.default_rng(19).uniform(0.15, 0.6, size=8)
    kills = 0
    for delay in delays:
        resuming = (run_dir / "config.json").exists()
        process = _start(
            *(["train", "sine", "--resume", str(run_dir)] if resuming else args),
            *([] if resuming else ["--out", str(run_dir)]),
        )
        try:
            process.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait()
            kills += 1
        if process.returncode == 0:
            break
        assert process.returncode in (-signal.SIGKILL, 2), process.communicate()[1]
        if run_dir.exists():
            _assert_complete(run_dir, temporaries=True)
    else:
        result = _metaopt("train", "sine", "--resume", str(run_dir))
        assert result.returncode == 0, result.stderr
    assert kills >= 2  # the test did kill the run, more than once
    _assert_complete(run_dir)
    _assert_same_state(_final_state(run_dir), _final_state(finished))


# -- read-only directories and file-size limits (slow) --------------------------------------------


@pytest.mark.slow
def test_a_read_only_directory_is_one_line_and_left_as_it_was(
    finished: Path, tmp_path: Path
) -> None:
    disk = tmp_path / "disk"
    _tmpfs(disk, "4m")
    try:
        run_dir = disk / "run"
        shutil.copytree(finished, run_dir)
        (disk / "empty").mkdir()
        before = {path.name: path.read_bytes() for path in run_dir.iterdir()}
        remounted = subprocess.run(["mount", "-o", "remount,ro", str(disk)])
        if remounted.returncode != 0:
            pytest.skip("this machine does not allow a read-only remount")
        for args in (
            ["train", "sine", "--resume", str(run_dir)],
            ["eval", str(run_dir)],
            ["train", "sine", *QUICK, "--out", str(disk / "empty")],
        ):
            assert "Read-only file system (EROFS)" in _one_line_error(_metaopt(*args))
        assert {path.name: path.read_bytes() for path in run_dir.iterdir()} == before
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


@pytest.mark.slow
def test_a_file_size_limit_keeps_the_earlier_eval_json(finished: Path, tmp_path: Path) -> None:
    import resource

    run_dir = _copy(finished, tmp_path)
    before = (run_dir / "eval.json").read_bytes()
    assert len(before) > 4096

    def limited() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))

    line = _one_line_error(_metaopt("eval", str(run_dir), preexec_fn=limited))
    assert "eval.json: File too large (EFBIG)" in line
    assert (run_dir / "eval.json").read_bytes() == before
    _assert_complete(run_dir)
