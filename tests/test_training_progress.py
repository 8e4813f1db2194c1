"""Progress off a terminal and TensorBoard events (issue 17, items 5 and --tensorboard)."""

from __future__ import annotations

import io
import json
import logging
import math
import re
from pathlib import Path

import pytest
import reliability_helpers as rh

from metaopt.cli import main
from metaopt.training import ProgressLog, TensorBoardHooks, train, with_progress
from metaopt.training.config import resolve_config
from metaopt.training.progress import LOGGER, format_duration, progress_to_stderr

_LINE = re.compile(
    r"^metaopt: rtoy/maml iteration (\d+)/12 \(\d+%\): query (\S+), support (\S+) -> (\S+); "
    r"\S+ it/s, ETA \S+$"
)


def test_off_a_terminal_training_logs_a_line_every_tenth_with_the_losses_rate_and_eta(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """stderr under capsys is not a terminal: no bar, but a line at the first iteration, every
    ceil(12 / 10) = 2 iterations after it, and the last."""
    out = tmp_path / "run"
    assert main(["train", "rtoy", "--iterations", "12", "--out", str(out)]) == 0
    err = capsys.readouterr().err
    lines = [m for m in map(_LINE.match, err.splitlines()) if m]
    assert [int(m[1]) for m in lines] == [1, 3, 5, 7, 9, 11, 12]
    rows = {row["iteration"]: row for row in rh.metrics(out)}
    for m in lines:
        row = rows[int(m[1])]
        assert float(m[2]) == pytest.approx(row["query"], rel=1e-3)
        assert float(m[3]) == pytest.approx(row["support_before"], rel=1e-3)
        assert float(m[4]) == pytest.approx(row["support_after"], rel=1e-3)
    assert "metaopt: rtoy/maml: evaluating on held-out tasks" in err
    assert "it/s" not in err.split("evaluating")[1]  # nothing after the evaluation starts


def test_quiet_prints_no_progress(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        main(["train", "rtoy", "--iterations", "4", "--out", str(tmp_path / "r"), "--quiet"]) == 0
    )
    assert "iteration" not in capsys.readouterr().err


def test_progress_log_spacing_by_iterations_and_seconds(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER.name)
    row = {"query": 0.5, "support_before": 2.0, "support_after": None}
    by_count = ProgressLog("x", 30, every=10, seconds=1e9)
    by_time = ProgressLog("y", 30, every=1000, seconds=1e-9)
    for hook in (by_count, by_time):
        for iteration in range(1, 31):
            hook.on_iteration_start(iteration, None)  # type: ignore[arg-type]
            hook.on_iteration_end(iteration, row)
    lines = [r.getMessage() for r in caplog.records]
    assert [line.split()[2] for line in lines if line.startswith("x ")] == [
        "1/30",
        "11/30",
        "21/30",
        "30/30",
    ]
    assert len([line for line in lines if line.startswith("y ")]) == 30
    assert "support 2 -> not finite" in lines[0]
    with pytest.raises(ValueError, match="every must be an integer >= 1"):
        ProgressLog("x", 30, every=0)


def test_with_progress_off_a_terminal_logs_start_and_periodic_lines() -> None:
    stream = io.StringIO()
    with progress_to_stderr():
        handler = LOGGER.handlers[-1]
        assert isinstance(handler, logging.StreamHandler)
        handler.setStream(stream)
        assert list(with_progress(range(5), total=5, desc="baseline", seconds=0)) == list(range(5))
    lines = stream.getvalue().splitlines()
    assert lines[0] == "metaopt: baseline: 5 steps"
    assert [line.split()[3].rstrip(";") for line in lines[1:]] == ["1/5", "2/5", "3/5", "4/5"]
    stream = io.StringIO()
    with progress_to_stderr(quiet=True):
        LOGGER.handlers[-1].setStream(stream)  # type: ignore[attr-defined]
        list(with_progress(range(5), total=5, desc="baseline", seconds=0))
    assert stream.getvalue() == ""


def test_format_duration() -> None:
    assert [format_duration(s) for s in (4.2, 185, 7620, math.inf)] == ["4s", "3m05s", "2h07m", "?"]


def test_tensorboard_events_hold_the_metrics_the_evaluation_and_the_plots(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    family = rh.family("rtoy")
    config = resolve_config(family, {"iterations": 6, "eval_every": 3, "out": str(tmp_path / "r")})
    run_dir = train(family, config, progress=False, hooks=[TensorBoardHooks()])
    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    rows = rh.metrics(run_dir)
    keys = {key for row in rows for key in row} - {"iteration"}
    assert keys <= set(events.Tags()["scalars"])
    for key in keys:
        written = {e.step: e.value for e in events.Scalars(key)}
        expected = {r["iteration"]: r[key] for r in rows if key in r}
        assert set(written) == set(expected), key
        for step, value in expected.items():
            assert written[step] == pytest.approx(value, rel=1e-6, abs=1e-6), (key, step)
    evaluation = json.loads((run_dir / "eval.json").read_text())
    for steps, summary in evaluation["by_steps"].items():
        (mean,) = [e.value for e in events.Scalars("eval/by_steps/mean") if e.step == int(steps)]
        assert mean == pytest.approx(summary["mean"], rel=1e-6)
    pngs = sorted(p.stem for p in run_dir.glob("*.png"))
    assert pngs and sorted(events.Tags()["images"]) == pngs


def test_tensorboard_on_resume_drops_the_events_after_the_checkpoint(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from metaopt.training import resume

    family = rh.family("rtoy")
    config = resolve_config(family, {"iterations": 4, "out": str(tmp_path / "r")})
    run_dir = train(family, config, progress=False, hooks=[TensorBoardHooks()])
    resume(run_dir, family=family, overrides={"iterations": 6}, hooks=[TensorBoardHooks()])
    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    events.Reload()
    assert [e.step for e in events.Scalars("query")] == [1, 2, 3, 4, 5, 6]
    rows = rh.metrics(run_dir)
    assert [e.value for e in events.Scalars("query")] == pytest.approx([r["query"] for r in rows])


def test_tensorboard_publishes_only_complete_event_files(tmp_path: Path, monkeypatch) -> None:
    """Events are staged and copied into the run directory whole: between publications the run
    directory holds the last complete copy, never a file still being appended to."""
    pytest.importorskip("tensorboard")
    from metaopt.training import tensorboard as tb

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    monkeypatch.setattr(tb, "PUBLISH_SECONDS", 3600.0)
    hooks = TensorBoardHooks()
    hooks.on_train_start(run_dir, resolve_config(rh.family("rtoy"), {}), 0)
    hooks.on_iteration_end(1, {"iteration": 1, "query": 0.5})
    assert list(run_dir.iterdir()) == []  # staged, not yet published
    monkeypatch.setattr(tb, "PUBLISH_SECONDS", 0.0)
    hooks.on_iteration_end(2, {"iteration": 2, "query": 0.25})
    (published,) = run_dir.iterdir()
    staged = hooks._staging / published.name
    assert published.read_bytes() == staged.read_bytes()
    hooks.on_run_end(run_dir, {"by_steps": {}})
    assert hooks._staging is None and [p.name for p in run_dir.iterdir()] == [published.name]
