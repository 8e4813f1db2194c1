"""The first run a user sees reads cleanly (issue 27, item 4): `metaopt train sine --out
runs/quickstart` prints no "diverged" line, as its 10-point protocol adapts at the step size the
model was meta-trained for, and the README says what the printed numbers are."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from metaopt.cli import main

README = Path(__file__).resolve().parent.parent / "README.md"


def _run(tmp_path: Path, capsys: pytest.CaptureFixture[str], *flags: str) -> tuple[str, dict]:
    out = tmp_path / "quickstart"
    assert main(["train", "sine", *flags, "--out", str(out)]) == 0
    captured = capsys.readouterr()
    return captured.out + captured.err, json.loads((out / "eval.json").read_text())


def test_a_short_quickstart_prints_no_diverged_line_and_its_protocol_uses_the_trained_step(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    small = ["--iterations", "20", "--eval-tasks", "50", "--baseline-steps", "20"]
    text, evaluation = _run(tmp_path, capsys, *small)
    assert "diverged" not in text
    assert evaluation["adaptation"] == {"rule": "sgd", "lr": 0.01}
    assert evaluation["protocol_10pt"]["adaptation"] == {"rule": "sgd", "lr": 0.01}
    assert "plain SGD at lr 0.01, MSE on the whole grid" in text
    config = json.loads((tmp_path / "quickstart" / "config.json").read_text())
    assert config["config"]["protocol_lr"] is None  # none fixed: the run's own --inner-lr


def test_protocol_lr_still_fixes_the_protocol_s_step(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    small = ["--iterations", "2", "--eval-tasks", "10", "--baseline-steps", "2"]
    _, evaluation = _run(tmp_path, capsys, *small, "--protocol-lr", "0.02")
    assert evaluation["protocol_10pt"]["adaptation"] == {"rule": "sgd", "lr": 0.02}


@pytest.mark.slow
def test_the_readme_quickstart_prints_no_diverged_line_and_the_numbers_it_quotes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The README's main command at its real defaults (about 40 s)."""
    text, _ = _run(tmp_path, capsys)
    assert "diverged" not in text
    before, after = (
        re.search(rf"after +{k} steps: (\S+) ± \S+ +\(baseline (\S+)", text) for k in (0, 1)
    )
    assert before is not None and after is not None
    quoted = (
        f"{float(before[1]):.2f} → {float(after[1]):.2f} against the baseline's "
        f"{float(before[2]):.2f} → {float(after[2]):.2f}"
    )
    assert quoted in " ".join(README.read_text().split())


def test_the_readme_paragraph_names_the_quickstart_s_settings() -> None:
    from supervised.config import SineConfig

    config = SineConfig()
    text = " ".join(README.read_text().split())
    assert f"over {config.eval_tasks} sine tasks" in text
    assert f"each task's {config.shots} support points (SGD at {config.inner_lr:g}," in text


def test_imaml_with_a_curvature_tied_step_runs_the_protocol_only_at_a_given_lr() -> None:
    from metaopt.training import resolve_config
    from supervised.sine.family import SineFamily

    family = SineFamily()
    tied = resolve_config(family, {"algo": "imaml"})  # iMAML's defaults: power iterations on
    assert tied.options.power_iterations > 0 and tied.protocol_step is None  # lr: only a cap
    assert resolve_config(family, {"algo": "imaml", "protocol_lr": 0.02}).protocol_step == 0.02
    fixed = resolve_config(family, {"algo": "imaml", "power_iterations": 0, "inner_lr": 0.05})
    assert fixed.protocol_step == 0.05
    assert resolve_config(family, {"algo": "maml"}).protocol_step == 0.01


def test_an_imaml_run_at_its_defaults_has_no_protocol_block_and_no_diverged_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    small = ["--iterations", "2", "--eval-tasks", "10", "--baseline-steps", "2"]
    text, evaluation = _run(tmp_path, capsys, "--algo", "imaml", *small)
    assert "protocol_10pt" not in evaluation and "plain SGD at lr" not in text
    assert "diverged" not in text
