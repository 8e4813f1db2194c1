"""ANIL and iMAML through the training machinery: ``metaopt train --algo imaml`` and
``--adapt`` (an interrupted run resumed bit-identical: tests/test_reliability_resume.py's grid)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from reliability_helpers import CHEAP
from test_reliability_resume import run

from metaopt.cli import main
from metaopt.training.family import ConfigError

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.filterwarnings("error::metaopt.training.ResumeWarning"),
]


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


def test_the_anil_timing_script_of_the_docs_runs(tmp_path: Path) -> None:
    """benchmarks/anil_time.py, which measured ANIL's time per iteration against MAML's in
    docs/results.md, on two tiny runs."""
    cheap = {**CHEAP["sine"], "iterations": 2}
    maml = run("sine", tmp_path / "maml", **cheap)
    anil = run("sine", tmp_path / "anil", **cheap, adapt="anil")
    script = Path(__file__).parents[1] / "benchmarks" / "anil_time.py"
    done = subprocess.run(
        [sys.executable, str(script), str(maml), str(anil), "--repeats", "3"],
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("ms per meta-iteration") == 2 and "ratio B / A" in done.stdout


@pytest.mark.slow
def test_the_imaml_spectrum_script_of_the_docs_runs(tmp_path: Path) -> None:
    """benchmarks/imaml_spectrum.py, which measured the spectrum of I + H/λ along an iMAML run in
    docs/results.md: on a tiny run its dense solve agrees with the converged MINRES solve."""
    script = Path(__file__).parents[1] / "benchmarks" / "imaml_spectrum.py"
    cheap = ["--meta-batch", "2", "--hidden", "8", "--baseline-steps", "0", "--eval-tasks", "2"]
    cheap += ["--protocol-steps", "1", "--iterations", "2", "--quiet", "--out", str(tmp_path)]
    train = ["sine", "--algo", "imaml", "--solver", "minres", "--reg", "50", "--cg-steps", "40"]
    train += ["--inner-lr", "0.01", "--inner-tol", "0", "--power-iterations", "0"]  # as the docs
    train += ["--curvature", "hessian", "--on-solve-failure", "stop"]
    done = subprocess.run(
        [sys.executable, str(script), "--every", "1", "--", *train, *cheap],
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.startswith("solve ")]
    assert len(lines) == 2, done.stderr
    for line in lines:
        assert float(line.rsplit(" ", 1)[1]) < 1e-4, line  # the solver's relative error


@pytest.mark.slow
def test_the_inner_residual_script_of_the_docs_runs(tmp_path: Path) -> None:
    """benchmarks/imaml_inner_residual.py, behind docs/results.md's residual-against-steps table:
    on a tiny tanh run the solve converges, plain and with momentum."""
    cheap = ["--meta-batch", "2", "--hidden", "8", "--baseline-steps", "0", "--eval-tasks", "2"]
    cheap += ["--protocol-steps", "1", "--iterations", "2", "--quiet", "--out", str(tmp_path)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    train = ["sine", "--algo", "imaml", "--activation", "tanh", *cheap]
    trained = subprocess.run(
        [sys.executable, "-m", "metaopt", "train", *train],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert trained.returncode == 0, trained.stderr
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.imaml_inner_residual", str(tmp_path), "--steps", "100"],
        env=env, capture_output=True, text=True, timeout=120,
        cwd=Path(__file__).parents[1],
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    rows = [line for line in done.stdout.splitlines() if line.startswith(str(tmp_path))]
    assert [row.split()[1].rstrip(":") for row in rows] == ["plain", "momentum"], rows
    for row in rows:
        cells = row.split(": ")[1].split()  # worst/median task after 0, 5, 10, ... steps
        assert cells[0] == "1/1" and float(cells[-1].split("/")[0]) < 1e-3, row


@pytest.mark.slow  # two runs and their evaluations: about 30 s on a loaded machine
def test_imaml_records_its_solves_and_skip_counts_the_dropped_batches(tmp_path: Path) -> None:
    # One CG step and a tolerance no solve meets: with --on-solve-failure skip every meta-batch
    # is dropped, counted in metrics.jsonl and eval.json, and θ never moves.
    import torch

    from metaopt.training import load_run

    cheap = ["--meta-batch", "2", "--hidden", "8", "--baseline-steps", "0", "--eval-tasks", "2"]
    cheap += ["--protocol-steps", "1", "--iterations", "3", "--quiet", "--curvature", "hessian"]
    out = tmp_path / "skip"
    hard = ["--cg-steps", "1", "--cg-tol", "1e-12", "--on-solve-failure", "skip"]
    assert main(["train", "sine", "--algo", "imaml", *hard, *cheap, "--out", str(out)]) == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [row["solve_skipped"] for row in rows] == [1, 2, 3]
    assert all(row["solve_failed"] == 1 and row["solve_residual"] > 1e-12 for row in rows)
    assert json.loads((out / "eval.json").read_text())["solve_skipped"] == 3
    _, config, algo = load_run(out)
    torch.manual_seed(config.seed)
    from metaopt.training.registry import get_family

    initial = get_family("sine").make_model(config)
    for trained, start in zip(algo.model.parameters(), initial.parameters(), strict=True):
        assert torch.equal(trained, start)

    fine = tmp_path / "fine"
    assert main(["train", "sine", "--algo", "imaml", *cheap, "--out", str(fine)]) == 0
    rows = [json.loads(line) for line in (fine / "metrics.jsonl").read_text().splitlines()]
    for row in rows:
        assert row["solve_skipped"] == 0 and row["solve_failed"] == 0
        assert 1 <= row["inner_steps_used"] <= 20 and row["solve_iterations"] >= 1
        assert row["inner_residual"] >= 0 and row["solve_residual"] <= 1e-3
