"""ANIL and iMAML through the training machinery: ``metaopt train --algo imaml`` and
``--adapt``, and an interrupted run resumed bit-identical (the resume grid's check, for the two
additions; ``ALGORITHMS`` there pairs each algorithm with a signal, so they join it here)."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
from reliability_helpers import CHEAP, assert_same_run, family, interrupting, metrics
from test_reliability_resume import ITERATIONS, run

from metaopt.cli import main
from metaopt.training import TrainingInterrupted, resume
from metaopt.training.family import ConfigError

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.filterwarnings("error::metaopt.training.ResumeWarning"),
]

#: iMAML on sine needs λ above the support Hessian's most negative eigenvalue (about −27 for the
#: sine MLP at initialisation), else I + H/λ is indefinite and the CG solve fails loudly.
CASES = {
    "rtoy-imaml": ("rtoy", {"algo": "imaml", "inner_steps": 3}),
    "sine-imaml": ("sine", {"algo": "imaml", "reg": 50.0, "cg_steps": 15, "inner_steps": 3}),
    "sine-anil": ("sine", {"algo": "maml", "adapt": "anil", "inner_steps": 2}),
    "sine-anil-metasgd": ("sine", {"algo": "metasgd", "adapt": "anil"}),
}


@pytest.mark.parametrize("case", list(CASES))
def test_signal_then_resume_is_bit_identical(tmp_path: Path, case: str) -> None:
    name, extra = CASES[case]
    values = {**CHEAP.get(name, {}), "iterations": ITERATIONS[name], "checkpoint_every": 4, **extra}
    full = run(name, tmp_path / "full", **values)
    at = ITERATIONS[name] // 2
    with pytest.raises(TrainingInterrupted):
        run(name, tmp_path / "cut", interrupting(family(name), at, signal.SIGTERM), **values)
    assert len(metrics(tmp_path / "cut")) == at
    resume(tmp_path / "cut", family=family(name), progress=False)
    assert_same_run(full, tmp_path / "cut")


def test_train_sine_with_imaml_and_anil_from_the_command(tmp_path: Path) -> None:
    cheap = ["--meta-batch", "2", "--hidden", "8", "--baseline-steps", "0", "--eval-tasks", "2"]
    cheap += ["--protocol-steps", "1", "--iterations", "3", "--quiet"]
    main(["train", "sine", "--algo", "imaml", "--reg", "50", *cheap, "--out", str(tmp_path / "i")])
    main(["train", "sine", "--adapt", "anil", *cheap, "--out", str(tmp_path / "a")])
    anil = json.loads((tmp_path / "a" / "config.json").read_text())["config"]
    assert anil["adapt"] == "anil"
    assert json.loads((tmp_path / "i" / "config.json").read_text())["config"]["algo"] == "imaml"


def test_adapt_naming_nothing_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--adapt nope: adapt: 'nope' names no parameter"):
        run("sine", tmp_path, **CHEAP["sine"], iterations=1, adapt="nope")
