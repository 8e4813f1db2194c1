"""Checkpoints and resume: an interrupted run, resumed, ends bit-identical to an uninterrupted one.

Interruptions are real signals: in-process (the family sends this process SIGINT/SIGTERM while
drawing an iteration's tasks) for the algorithm × family grid, and to a ``python -m metaopt train``
subprocess for the command's own path (exit status, message, no traceback).
"""

from __future__ import annotations

import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from reliability_helpers import (
    ALGORITHMS,
    CHEAP,
    SUBPROCESS_ENV,
    assert_same_run,
    cli_flags,
    crashing,
    family,
    interrupting,
    metrics,
)

from metaopt.cli import main
from metaopt.training import TrainingInterrupted, resume, train
from metaopt.training import checkpoint as ckpt
from metaopt.training.config import resolve_config
from metaopt.training.family import ConfigError
from metaopt.training.state import random_state, restore_random_state

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.filterwarnings("error::metaopt.training.ResumeWarning"),
]

ITERATIONS = {"rtoy": 12, "sine": 10, "mdp": 6}

#: iMAML and ANIL as the grid runs them: the flags behind each name. iMAML on sine needs λ above
#: the support Hessian's most negative eigenvalue (about −27 for the sine MLP at initialisation),
#: else I + H/λ is indefinite and the CG solve fails loudly; the RL families refuse iMAML.
ADDITIONS: dict[str, dict[str, object]] = {
    "imaml": {"algo": "imaml", "inner_steps": 3},
    "imaml-sine": {"algo": "imaml", "reg": 50.0, "cg_steps": 15, "inner_steps": 3},
    "anil": {"algo": "maml", "adapt": "anil", "inner_steps": 2},
    "anil-metasgd": {"algo": "metasgd", "adapt": "anil"},
}
GRID = [(name, algo) for name in ("rtoy", "sine", "mdp") for algo in ALGORITHMS] + [
    ("rtoy", "imaml"),
    ("sine", "imaml-sine"),
    ("sine", "anil"),
    ("sine", "anil-metasgd"),
    ("mdp", "anil"),
]


def overrides(name: str, algo: str, **extra: object) -> dict[str, object]:
    if algo in ADDITIONS:
        values = {**CHEAP.get(name, {}), "iterations": ITERATIONS[name], **ADDITIONS[algo]}
        return {**values, **extra}
    values: dict[str, object] = {**CHEAP.get(name, {}), "algo": algo}
    values["iterations"] = ITERATIONS[name]
    if (
        algo == "reptile"
    ):  # the Reptile seed's outer loop: plain SGD, annealed (a schedule to restore)
        values.update(outer_optimizer="sgd", outer_lr=0.1, anneal=True)
    if algo == "maml":
        values["inner_steps"] = 2
    return {**values, **extra}


def run(name: str, out: Path, fam=None, **values: object) -> Path:
    fam = fam if fam is not None else family(name)
    return train(fam, resolve_config(fam, {**values, "out": str(out)}), progress=False)


# -- interrupted by a signal, resumed, compared ---------------------------------------------------


@pytest.mark.parametrize(("name", "algo"), GRID)
def test_signal_then_resume_is_bit_identical(tmp_path: Path, name: str, algo: str) -> None:
    values = overrides(name, algo, checkpoint_every=4)
    full = run(name, tmp_path / "full", **values)
    at = ITERATIONS[name] // 2
    signum = signal.SIGINT if GRID.index((name, algo)) % 2 else signal.SIGTERM
    with pytest.raises(TrainingInterrupted) as stop:
        run(name, tmp_path / "cut", interrupting(family(name), at, signum), **values)
    # The iteration under way when the signal came is finished and saved, nothing after it.
    assert stop.value.iteration == at and stop.value.exit_status == 128 + signum
    assert len(metrics(tmp_path / "cut")) == at
    assert ckpt.load_checkpoint(tmp_path / "cut" / "checkpoint.pt")["iteration"] == at
    assert not (tmp_path / "cut" / "eval.json").exists()
    resume(tmp_path / "cut", family=family(name), progress=False)
    assert_same_run(full, tmp_path / "cut")


def test_second_signal_stops_at_once_without_saving(tmp_path: Path) -> None:
    inner = family("rtoy")

    def sample_tasks(self, config, rng, num_tasks):
        self.calls = getattr(self, "calls", 0) + 1
        if self.calls == 5:
            # raise_signal signals this thread and runs the Python handler before it returns.
            signal.raise_signal(signal.SIGINT)
            signal.raise_signal(signal.SIGINT)
        return type(inner).sample_tasks(self, config, rng, num_tasks)

    impatient = type("Impatient", (type(inner),), {"sample_tasks": sample_tasks})()
    # What the process had before: Python's default_int_handler, or SIG_IGN when the test run
    # was started in the background by a non-interactive shell (which ignores SIGINT for it).
    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(TrainingInterrupted, match="interrupted again by SIGINT during iteration 5"):
        run("rtoy", tmp_path, impatient, checkpoint_every=2)
    assert ckpt.load_checkpoint(tmp_path / "checkpoint.pt")["iteration"] == 4
    assert signal.getsignal(signal.SIGINT) is before  # handlers put back


def test_crash_then_resume_cuts_metrics_back_to_the_checkpoint(tmp_path: Path) -> None:
    values = overrides("rtoy", "fomaml", checkpoint_every=4)
    full = run("rtoy", tmp_path / "full", **values)
    with pytest.raises(MemoryError):
        run("rtoy", tmp_path / "cut", crashing(family("rtoy"), 7), **values)
    assert len(metrics(tmp_path / "cut")) == 6  # logged after the checkpoint at 4
    resume(tmp_path / "cut", progress=False)
    assert_same_run(full, tmp_path / "cut")


def test_resume_extends_a_run_with_more_iterations(tmp_path: Path) -> None:
    values = overrides("rtoy", "metasgd")
    long = run("rtoy", tmp_path / "long", **{**values, "iterations": 12})
    short = run("rtoy", tmp_path / "short", **{**values, "iterations": 5})
    resume(short, overrides={"iterations": 12, "algo": "metasgd"}, progress=False)
    assert_same_run(long, short)


def test_resume_of_a_finished_run_evaluates_again(tmp_path: Path) -> None:
    done = run("rtoy", tmp_path, iterations=3)
    (done / "eval.json").unlink()
    resume(done, progress=False)
    assert (done / "eval.json").is_file() and len(metrics(done)) == 3


# -- the checkpoint files -------------------------------------------------------------------------


def test_checkpoint_rotation_keeps_the_previous_one(tmp_path: Path) -> None:
    run("rtoy", tmp_path, iterations=10, checkpoint_every=4)
    assert ckpt.load_checkpoint(tmp_path / "checkpoint.pt")["iteration"] == 10
    assert ckpt.load_checkpoint(tmp_path / "checkpoint.prev.pt")["iteration"] == 8
    assert not list(tmp_path.glob(".*.tmp"))


def test_truncated_latest_is_reported_and_the_previous_one_offered(tmp_path: Path, capsys) -> None:
    values = overrides("rtoy", "maml", iterations=10, checkpoint_every=4)
    reference = run("rtoy", tmp_path / "ref", **values)
    damaged = run("rtoy", tmp_path / "run", **values)
    latest = damaged / "checkpoint.pt"
    latest.write_bytes(latest.read_bytes()[:-100])
    assert main(["train", "rtoy", "--resume", str(damaged), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert "checkpoint.pt is truncated" in err
    assert (
        f"checkpoint.prev.pt (iteration 8) is intact: continue from it with metaopt train rtoy --resume {damaged} --checkpoint checkpoint.prev.pt"
        in err
    )
    # Taking the offer continues from iteration 8, and ends where the undamaged run ended.
    argv = ["train", "rtoy", "--resume", str(damaged), "--checkpoint", "checkpoint.prev.pt"]
    assert main([*argv, "--quiet"]) == 0
    assert_same_run(reference, damaged)
    assert (damaged / "checkpoint.abandoned.pt").is_file()


def test_flipped_byte_is_detected(tmp_path: Path) -> None:
    path = tmp_path / "c.pt"
    ckpt.save_checkpoint(path, {"weights": torch.arange(1000.0)})
    data = bytearray(path.read_bytes())
    data[-500] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(ckpt.CheckpointError, match="is corrupt \\(checksum mismatch\\)"):
        ckpt.load_checkpoint(path)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "not a metaopt checkpoint of format version 2"),
        (b"METAOPT-CHECKPOINT {nonsense\n", "corrupt \\(unreadable header\\)"),
        (
            b'METAOPT-CHECKPOINT {"format": 1, "bytes": 0, "sha256": ""}\n',
            "has format version 1; this metaopt reads version 2",
        ),
    ],
)
def test_foreign_or_old_files_are_refused(tmp_path: Path, content: bytes, message: str) -> None:
    (tmp_path / "c.pt").write_bytes(content)
    with pytest.raises(ckpt.CheckpointError, match=message):
        ckpt.load_checkpoint(tmp_path / "c.pt")


def test_old_torch_save_checkpoint_is_refused(tmp_path: Path) -> None:
    torch.save({"version": 1, "iteration": 3}, tmp_path / "c.pt")
    with pytest.raises(ckpt.CheckpointError, match="no header; written by an older metaopt"):
        ckpt.load_checkpoint(tmp_path / "c.pt")


def test_a_crash_while_saving_leaves_the_latest_checkpoint_intact(
    tmp_path: Path, monkeypatch
) -> None:
    path = tmp_path / "checkpoint.pt"
    ckpt.save_checkpoint(path, {"iteration": 1})

    def fail(fd: int) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(ckpt.os, "fsync", fail)
    with pytest.raises(OSError, match="disk full"):
        ckpt.save_checkpoint(path, {"iteration": 2}, keep_previous=True)
    monkeypatch.undo()
    assert ckpt.load_checkpoint(path)["iteration"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]


def test_random_state_round_trip(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    # Through a checkpoint file, as a resume sees it (weights_only loading included).
    ckpt.save_checkpoint(tmp_path / "c.pt", {"random": random_state(rng)})
    first = (rng.random(), random.random(), np.random.random(), torch.rand(1).item())  # noqa: NPY002
    other = np.random.default_rng(99)
    restore_random_state(other, ckpt.load_checkpoint(tmp_path / "c.pt")["random"])
    again = (other.random(), random.random(), np.random.random(), torch.rand(1).item())  # noqa: NPY002
    assert first == again


# -- refusing what does not belong ----------------------------------------------------------------


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("finished") / "run"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the tests that resume it (see one_thread)
    try:
        return run("rtoy", out, iterations=4, inner_lr=0.2)
    finally:
        torch.set_num_threads(threads)


def _resume_error(run_dir: Path, **values: object) -> str:
    copy = run_dir.parent / f"copy{time.monotonic_ns()}"
    shutil.copytree(run_dir, copy)
    with pytest.raises(ConfigError) as error:
        resume(copy, overrides=values, progress=False)
    return str(error.value)


def test_a_differing_flag_is_refused_naming_it(finished: Path) -> None:
    message = _resume_error(finished, inner_lr=0.5)
    assert "--inner-lr 0.5 differs from the run's 0.2" in message
    assert "flags that may change: --iterations, --checkpoint-every" in message


def test_iterations_below_the_checkpoint_are_refused(finished: Path) -> None:
    assert "--iterations 2 is less than the checkpoint's iteration 4" in _resume_error(
        finished, iterations=2
    )


def test_iterations_cannot_change_under_annealing(tmp_path: Path) -> None:
    annealed = run("rtoy", tmp_path, iterations=3, anneal=True)
    with pytest.raises(ConfigError, match="with --anneal the outer learning-rate schedule"):
        resume(annealed, overrides={"iterations": 6}, progress=False)


def test_out_is_refused_with_resume(finished: Path) -> None:
    assert "--out cannot be combined with --resume" in _resume_error(finished, out="elsewhere")


def test_a_checkpoint_of_another_run_is_refused(tmp_path: Path, finished: Path) -> None:
    other = run("rtoy", tmp_path / "other", iterations=4, inner_lr=0.3)
    target = tmp_path / "target"
    shutil.copytree(finished, target)
    shutil.copy(other / "checkpoint.pt", target / "checkpoint.pt")
    with pytest.raises(
        ConfigError, match="written with --inner-lr 0.3 but the run's config.json has 0.2"
    ):
        resume(target, progress=False)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["train", "sine", "--resume", "{run}"], "is a run of family 'rtoy', not 'sine'"),
        (["train", "rtoy", "--resume", "/nonexistent"], "--resume '/nonexistent' does not exist"),
        (
            ["train", "rtoy", "--checkpoint", "checkpoint.prev.pt"],
            "--checkpoint only applies with --resume",
        ),
        (
            ["train", "rtoy", "--resume", "{run}", "--out", "x"],
            "--out cannot be combined with --resume",
        ),
        (
            ["train", "rtoy", "--resume", "{run}", "--checkpoint", "nope.pt"],
            "nope.pt does not exist",
        ),
    ],
)
def test_resume_user_errors_exit_2(finished: Path, argv: list[str], message: str, capsys) -> None:
    assert main([a.format(run=finished) for a in argv]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


# -- a real signal to the command, in a subprocess ------------------------------------------------


def _wait_for_rows(proc: subprocess.Popen, path: Path, rows: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.is_file() and len(path.read_text().splitlines()) >= rows:
            return
        if proc.poll() is not None:
            pytest.fail(
                f"metaopt exited ({proc.returncode}) before the signal: {proc.stderr.read()}"
            )
        time.sleep(0.01)
    proc.kill()
    pytest.fail(f"no {rows} rows in {path} after {timeout} s")


SUBPROCESS_CASES = [
    pytest.param("sine", "maml", signal.SIGINT),
    pytest.param("mdp", "reptile", signal.SIGTERM, marks=pytest.mark.slow),
    *[
        pytest.param(name, algo, signum, marks=pytest.mark.slow)
        for name in ("sine", "mdp")
        for algo, signum in zip(
            ALGORITHMS, (signal.SIGTERM, signal.SIGINT, signal.SIGTERM, signal.SIGINT), strict=True
        )
        if (name, algo) not in (("sine", "maml"), ("mdp", "reptile"))
    ],
]


@pytest.mark.parametrize(("name", "algo", "signum"), SUBPROCESS_CASES)
def test_signal_to_the_command_then_resume(
    tmp_path: Path, name: str, algo: str, signum: int, capsys
) -> None:
    iterations = {"sine": 150, "mdp": 12}[name]
    flags = [*cli_flags(overrides(name, algo, iterations=iterations)), "--quiet"]
    env = SUBPROCESS_ENV
    command = [sys.executable, "-m", "metaopt", "train", name, *flags]
    cut = tmp_path / "cut"
    proc = subprocess.Popen(
        [*command, "--out", str(cut)],
        env=env,
        stderr=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    _wait_for_rows(proc, cut / "metrics.jsonl", 3)
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signum, err
    name_of = signal.Signals(signum).name
    assert err.startswith(f"metaopt: interrupted by {name_of} after iteration ")
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    done = len(metrics(cut))
    assert 3 <= done < iterations
    assert ckpt.load_checkpoint(cut / "checkpoint.pt")["iteration"] == done

    resumed = subprocess.run(
        [sys.executable, "-m", "metaopt", "train", name, "--resume", str(cut), "--quiet"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert resumed.returncode == 0, resumed.stderr
    assert main([*command[3:], "--out", str(tmp_path / "full")]) == 0
    capsys.readouterr()
    assert_same_run(tmp_path / "full", cut)
    assert (cut / "eval.json").read_text() == (tmp_path / "full" / "eval.json").read_text()
