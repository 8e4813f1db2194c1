"""Same seed, same machine, same thread count: identical metrics and evaluations, per command."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from reliability_helpers import CHEAP, cli_flags, metrics

from metaopt.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")

FLAGS = {
    "rtoy": ["--iterations", "6"],
    "sine": [*cli_flags(CHEAP["sine"]), "--iterations", "6", "--eval-every", "3"],
    "mdp": [*cli_flags(CHEAP["mdp"]), "--iterations", "3", "--eval-every", "2"],
}


def _pollute_global_generators() -> None:
    """What other code in the process may do between two runs; the runs must not care."""
    random.random()
    np.random.random()  # noqa: NPY002
    torch.rand(3)


def _train(tmp_path: Path, name: str, run: str, *extra: str) -> Path:
    out = tmp_path / run
    assert main(["train", name, *FLAGS[name], *extra, "--out", str(out), "--quiet"]) == 0
    return out


@pytest.mark.parametrize("name", ["rtoy", "sine", "mdp"])
def test_train_same_seed_same_metrics_and_evaluation(tmp_path: Path, name: str, capsys) -> None:
    first = _train(tmp_path, name, "a", "--algo", "metasgd")
    _pollute_global_generators()
    second = _train(tmp_path, name, "b", "--algo", "metasgd")
    other_seed = _train(tmp_path, name, "c", "--algo", "metasgd", "--seed", "1")
    capsys.readouterr()
    assert metrics(first) == metrics(second)
    assert metrics(first) != metrics(other_seed)  # the comparison can fail
    assert (first / "eval.json").read_text() == (second / "eval.json").read_text()


@pytest.mark.parametrize("name", ["rtoy", "sine", "mdp"])
def test_eval_command_repeats_itself(tmp_path: Path, name: str, capsys) -> None:
    run = _train(tmp_path, name, "run")
    capsys.readouterr()
    outputs = []
    for _ in range(2):
        assert main(["eval", str(run), "--tasks", "3", "--steps", "0,1,2"]) == 0
        outputs.append((capsys.readouterr().out, (run / "eval-3-0,1,2.json").read_text()))
        _pollute_global_generators()
    assert outputs[0] == outputs[1]
    assert json.loads(outputs[0][1])["tasks"] == 3


def test_families_command_repeats_itself(capsys) -> None:
    assert main(["families"]) == 0
    first = capsys.readouterr().out
    assert main(["families"]) == 0
    assert capsys.readouterr().out == first and "rtoy" in first
