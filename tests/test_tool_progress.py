"""Progress of ``metaopt bench`` and ``scale`` as training shows it (issue 27, item 6): plain lines
when stderr is not a terminal, a tqdm bar when it is. ``compare``'s are in test_compare.py."""

from __future__ import annotations

import io
import logging
import re
import sys
from pathlib import Path

import pytest
from test_bench import eager_backend
from test_scaling import _fake_runs

import metaopt.compiled as compiled
from metaopt.cli import main
from metaopt.training.progress import LOGGER, StepProgress, format_rate


class FakeTerminal(io.StringIO):
    """A stderr that says it is a terminal."""

    def isatty(self) -> bool:
        return True


def _lines(text: str, desc: str, unit: str, total: int) -> list[re.Match[str]]:
    line = re.compile(
        rf"^metaopt: {re.escape(desc)}: {unit} (\d+)/{total} \(\d+%\)(?:: (.*))?; "
        rf"\S+ (?:s/{unit}|{unit}s/s), ETA \S+$"
    )
    return [m for m in map(line.match, text.splitlines()) if m]


def test_step_progress_lines_off_a_terminal(caplog: pytest.LogCaptureFixture) -> None:
    """A start line, then the first, every ceil(25 / 10) = 3rd and the last step."""
    caplog.set_level(logging.INFO, logger=LOGGER.name)
    with StepProgress("job", 25, unit="case", show=None, seconds=1e9) as bar:
        assert bar.lines
        for index in range(25):
            bar.update(f"c{index}")
    messages = [r.getMessage() for r in caplog.records]
    assert messages[0] == "job: 25 cases"
    done = [
        int(m[1]) for m in _lines("\n".join("metaopt: " + m for m in messages), "job", "case", 25)
    ]
    assert done == [1, 4, 7, 10, 13, 16, 19, 22, 25]
    assert messages[-1].startswith("job: case 25/25 (100%): c24; ")
    assert [format_rate(r, "run") for r in (2.5, 0.05, 0.0)] == [
        "2.5 runs/s",
        "20 s/run",
        "? s/run",
    ]


def test_lazy_step_progress_shows_nothing_until_a_step_is_done(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER.name)
    with StepProgress("none", 9, unit="row", lazy=True):
        pass
    assert caplog.records == []
    with StepProgress("some", 2, unit="row", lazy=True) as bar:
        bar.update()
    assert [r.getMessage().split(";")[0] for r in caplog.records] == [
        "some: 2 rows",
        "some: row 1/2 (50%)",
    ]


def test_step_progress_on_a_terminal_is_a_bar_and_prints_above_it(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    terminal = FakeTerminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    caplog.set_level(logging.INFO, logger=LOGGER.name)
    printed: list[str] = []
    with StepProgress("job", 3, unit="case") as bar:
        assert not bar.lines
        echo = bar.printer(printed.append)
        for index in range(3):
            echo(f"row {index}")
            bar.update(f"c{index}")
    assert printed == ["row 0", "row 1", "row 2"]
    assert "3/3" in terminal.getvalue() and "c2" in terminal.getvalue()
    assert caplog.records == []  # no lines
    with StepProgress("job", 3, show=False) as quiet:
        assert quiet.printer(printed.append) == printed.append
        quiet.update()
    assert "job" not in terminal.getvalue().split("3/3")[-1]


BENCH = ["bench", "--quick", "--threads", "1", "--repeats", "1", "--no-compiled"]
BENCH += ["--cases", "sine-maml-1step,sine-metasgd-1step", "--no-memory", "--min-sample-ms", "0"]


def test_bench_off_a_terminal_prints_progress_lines(monkeypatch, capsys) -> None:
    monkeypatch.setattr(compiled, "compile_options", eager_backend)
    assert main(BENCH) == 0
    captured = capsys.readouterr()
    assert "metaopt: bench: 2 parts" in captured.err  # the two cases
    lines = _lines(captured.err, "bench", "part", 2)
    assert [(m[1], m[2]) for m in lines] == [("1", "sine-maml-1step"), ("2", "sine-metasgd-1step")]
    assert "sine-maml-1step" in captured.out and "part" not in captured.out
    assert main([*BENCH, "--quiet"]) == 0
    assert "part" not in capsys.readouterr().err


def test_bench_on_a_terminal_shows_a_bar(monkeypatch, capsys) -> None:
    monkeypatch.setattr(compiled, "compile_options", eager_backend)
    terminal = FakeTerminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    assert main(BENCH) == 0
    assert "sine-maml-1step" in capsys.readouterr().out  # the table still on stdout
    assert not _lines(terminal.getvalue(), "bench", "part", 2)
    assert "bench: 100%" in terminal.getvalue() and "2/2" in terminal.getvalue()


SCALE = ["scale", "mdp", "--iterations", "10", "--check-iterations", "2", "--repeats", "1"]


def test_scale_off_a_terminal_prints_progress_lines(monkeypatch, tmp_path: Path, capsys) -> None:
    _fake_runs(monkeypatch, tmp_path, part=4)
    assert main(SCALE) == 0
    err = capsys.readouterr().err
    assert "metaopt: scale mdp: 4 runs" in err
    notes = [m[2] for m in _lines(err, "scale mdp", "run", 4)]
    assert [note.split(":")[0] for note in notes] == [
        "agreement run, 1 process, 2 iteration(s)",
        "agreement run, 2 processes, 2 iteration(s)",
        "1 process, repeat 1/1",
        "2 processes, repeat 1/1",
    ]


def test_scale_on_a_terminal_shows_a_bar(monkeypatch, tmp_path: Path, capsys) -> None:
    _fake_runs(monkeypatch, tmp_path, part=4)
    terminal = FakeTerminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    assert main(SCALE) == 0
    assert "ms/iteration" in capsys.readouterr().out
    assert not _lines(terminal.getvalue(), "scale mdp", "run", 4)
    assert "scale mdp: 100%" in terminal.getvalue() and "4/4" in terminal.getvalue()
