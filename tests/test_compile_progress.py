"""Compiling is not hanging (issue 27, item 7): the compiled engine's first call is announced, and
its time stays out of the rate and the ETA, in the log lines and on the terminal's bar."""

from __future__ import annotations

import io
import logging
import re
import sys
import time
from pathlib import Path

import pytest
import reliability_helpers as rh

import metaopt.training.loop as loop
import metaopt.training.progress as progress
from metaopt.training import ProgressLog, TrainingHooks, train
from metaopt.training.config import resolve_config
from metaopt.training.progress import LOGGER, compile_notice


class Compiled:
    """What compile_notice asks of a learner: its engine (and, through engine_of, whether it has
    compiled in this process)."""

    engine = "compiled"


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_the_log_announces_the_compile_and_rates_from_the_next_iteration(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The first iteration takes 100 s (the compile), every other 2 s: the lines say 0.5 it/s and
    the ETA at that rate, not 11 iterations over 120 s."""
    clock = Clock()
    monkeypatch.setattr(progress.time, "perf_counter", clock)
    caplog.set_level(logging.INFO, logger=LOGGER.name)
    log = ProgressLog("x", 11, every=5, seconds=1e9)
    row = {"query": 0.5, "support_before": 2.0, "support_after": 1.0}
    for iteration in range(1, 12):
        log.on_iteration_start(iteration, Compiled())  # type: ignore[arg-type]
        clock.now += 100.0 if iteration == 1 else 2.0
        log.on_iteration_end(iteration, row)
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0] == f"x: {compile_notice(Compiled())}"
    assert lines[0] == (
        "x: compiling (first call; about 10 s if it compiled before on this machine, about 60 s "
        "the first time, on 2 CPU cores; not counted in the rate)"
    )
    assert lines[1] == "x iteration 1/11 (9%): query 0.5, support 2 -> 1; compiled in 1m40s"
    assert lines[2:] == [
        "x iteration 2/11 (18%): query 0.5, support 2 -> 1; 0.5 it/s, ETA 18s",
        "x iteration 7/11 (63%): query 0.5, support 2 -> 1; 0.5 it/s, ETA 8s",
        "x iteration 11/11 (100%): query 0.5, support 2 -> 1; 0.5 it/s, ETA 0s",
    ]


def test_no_notice_for_an_engine_that_does_not_compile() -> None:
    class Vectorised:
        engine = "vmap"

    assert compile_notice(Vectorised()) is None


class SlowFirstIteration(TrainingHooks):
    """Stands for the compile: the first iteration's start waits ``seconds``."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def on_iteration_start(self, iteration: int, algo: object) -> None:
        if iteration == 1:
            time.sleep(self.seconds)


def test_the_bar_shows_the_notice_and_leaves_the_compile_out_of_its_rate(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """On a terminal: the bar carries the notice while the first iteration runs, and its rate
    after it counts the other iterations only (6 iterations after a 2 s first one would be under
    3 it/s)."""

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    monkeypatch.setattr(loop, "compile_notice", lambda algo: "compiling (first call; test)")
    family = rh.family("rtoy")
    config = resolve_config(family, {"iterations": 6, "out": str(tmp_path / "r")})
    train(family, config, progress=None, hooks=[SlowFirstIteration(2.0)])
    shown = terminal.getvalue()
    assert "compiling (first call; test)" in shown
    final = [part for part in shown.split("\r") if "6/6" in part][-1]
    rate = float(re.search(r"([\d.]+)it/s", final)[1])  # type: ignore[index]
    assert rate > 3.0, final
