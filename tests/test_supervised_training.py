"""End to end: meta-training through metaopt.training.train, evaluation files, learning, the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from supervised_helpers import FIXTURE_SPLIT, omniglot_dir_fixture  # noqa: F401 - fixtures

from metaopt import cli
from metaopt.training import evaluate_run, resume, train
from metaopt.training.checkpoint import load_checkpoint
from metaopt.training.config import resolve_config
from metaopt.training.family import TaskFamily
from supervised.classify.family import ClassifyFamily
from supervised.evaluation import EVAL_STEPS
from supervised.omniglot.family import OmniglotFamily
from supervised.sine.family import SineFamily

#: Keep the smoke runs small: the point is that every piece runs and writes its file.
SMALL = {"eval_tasks": 12, "baseline_steps": 5, "baseline_tasks": 4}


def _train(family: TaskFamily, out: Path, **overrides: Any) -> Path:
    config = resolve_config(family, {**SMALL, **overrides, "out": str(out)})
    return train(family, config, progress=False)


def _check_block(block: dict[str, Any], steps: list[str]) -> None:
    assert list(block["by_steps"]) == steps
    assert list(block["baseline"]["by_steps"]) == steps
    for summary in [*block["by_steps"].values(), *block["baseline"]["by_steps"].values()]:
        assert set(summary) >= {"mean", "ci95"}
        assert np.isfinite(summary["mean"]) and summary["ci95"] >= 0


def _check_run_dir(run_dir: Path, family: TaskFamily, iterations: int) -> dict[str, Any]:
    for name in (
        "config.json",
        "metrics.jsonl",
        "checkpoint.pt",
        "eval.json",
        "baseline.pt",
        "training_curve.png",
    ):
        assert (run_dir / name).is_file(), name
    assert (run_dir / f"{family.metric}_vs_steps.png").stat().st_size > 1000
    assert len((run_dir / "metrics.jsonl").read_text().splitlines()) == iterations
    evaluation = json.loads((run_dir / "eval.json").read_text())
    assert evaluation["metric"] == family.metric
    assert evaluation["tasks"] == SMALL["eval_tasks"]
    _check_block(evaluation, [str(s) for s in EVAL_STEPS])
    return evaluation


@pytest.mark.parametrize("algo", ["maml", "fomaml", "metasgd", "reptile"])
def test_sine_smoke_run_leaves_a_complete_run_dir(algo: str, tmp_path: Path) -> None:
    family = SineFamily()
    run_dir = _train(family, tmp_path / "run", algo=algo, iterations=3, meta_batch=4, eval_every=3)
    evaluation = _check_run_dir(run_dir, family, 3)
    assert (run_dir / "adaptation.png").stat().st_size > 1000
    _check_block(evaluation["protocol_10pt"], ["0", "1", "5", "10", "32"])
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert "val_mse_after" not in rows[1] and rows[2]["val_mse_after"] > 0  # every 3 iterations


def test_sine_reptile_preset_smoke(tmp_path: Path) -> None:
    family = SineFamily()
    run_dir = _train(family, tmp_path / "run", preset="reptile", iterations=4)
    evaluation = _check_run_dir(run_dir, family, 4)
    # The reptile preset is evaluated by the demo's protocol: both blocks measure the same thing.
    assert evaluation["by_steps"] == evaluation["protocol_10pt"]["by_steps"]


def test_classify_smoke(tmp_path: Path) -> None:
    family = ClassifyFamily()
    evaluation = _check_run_dir(
        _train(family, tmp_path / "run", iterations=3, meta_batch=4), family, 3
    )
    assert all(0 <= v["mean"] <= 1 for v in evaluation["by_steps"].values())


def test_omniglot_smoke(omniglot_dir: Path, tmp_path: Path) -> None:
    family = OmniglotFamily()
    run_dir = _train(
        family,
        tmp_path / "run",
        data_dir=str(omniglot_dir),
        **FIXTURE_SPLIT,
        iterations=2,
        meta_batch=2,
        eval_every=2,
        val_episodes=12,
        filters=8,
    )
    _check_run_dir(run_dir, family, 2)
    last = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])
    assert 0 <= last["val_accuracy_after"] <= 1
    saved = json.loads((run_dir / "config.json").read_text())
    # Each task normalises with its own batch, so the conv net runs on the vectorised engine.
    assert saved["config"]["batch_norm"] == "batch"
    assert saved["engine_used"] == "vmap"


def test_reevaluation_reuses_the_cached_baseline_and_reproduces_eval_json(tmp_path: Path) -> None:
    run_dir = _train(SineFamily(), tmp_path / "run", iterations=2, meta_batch=2)
    first = json.loads((run_dir / "eval.json").read_text())
    stamp = (run_dir / "baseline.pt").stat().st_mtime_ns
    again = evaluate_run(run_dir)
    assert (run_dir / "baseline.pt").stat().st_mtime_ns == stamp  # loaded, not retrained
    assert json.loads(json.dumps(again)) == first
    fewer = evaluate_run(run_dir, num_tasks=5, steps=[0, 2])
    assert fewer["tasks"] == 5 and list(fewer["by_steps"]) == ["0", "2"]


def test_short_meta_training_beats_the_pretrained_baseline(tmp_path: Path) -> None:
    """A few hundred MAML iterations: after one step the meta-learned model must be far better
    than the pretrained network fine-tuned the same way. Broken adaptation (no inner step, or
    an inner step that ignores the support set) leaves the post-adaptation error near 2.5+."""
    family = SineFamily()
    config = resolve_config(
        family,
        {
            "iterations": 300,
            "outer_lr": 0.003,
            "eval_tasks": 300,
            "baseline_steps": 500,
            "out": str(tmp_path / "run"),
        },
    )
    evaluation = json.loads((train(family, config, progress=False) / "eval.json").read_text())
    meta, base = evaluation["by_steps"], evaluation["baseline"]["by_steps"]
    assert meta["1"]["mean"] < 0.75 * base["1"]["mean"], (meta["1"], base["1"])
    difference = evaluation["meta_minus_baseline"]["1"]
    assert difference["mean"] + difference["ci95"] < 0  # significant, paired over the same tasks
    gain = evaluation["after_minus_before"]["1"]
    assert gain["mean"] + gain["ci95"] < 0  # one step of adaptation helps
    assert meta["1"]["mean"] < 1.5


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "metaopt", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        check=False,
    )


def test_cli_train_then_eval(tmp_path: Path) -> None:
    small = ["--eval-tasks", "10", "--baseline-steps", "5", "--quiet"]
    trained = _cli("train", "sine", "--iterations", "3", "--out", "run", *small, cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr
    assert "after  1 steps" in trained.stdout and "run directory: run" in trained.stdout
    evaluated = _cli("eval", "run", "--tasks", "7", "--steps", "0,3", cwd=tmp_path)
    assert evaluated.returncode == 0, evaluated.stderr
    saved = json.loads((tmp_path / "run" / "eval-7-0,3.json").read_text())
    assert saved["tasks"] == 7 and list(saved["by_steps"]) == ["0", "3"]
    assert json.loads((tmp_path / "run" / "eval.json").read_text())["tasks"] == 10  # kept


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["train", "sine", "--preset", "reptile", "--shots", "60"], ["--shots", "60", "50"]),
        (
            ["train", "omniglot", "--data-dir", "missing-folder"],
            ["--data-dir", "images_background"],
        ),
        (["train", "classify", "--model", "tree"], ["--model", "logistic"]),
    ],
)
def test_cli_bad_input_is_one_line_and_status_2(
    tmp_path: Path, args: list[str], words: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    # In process (the subprocess path is covered above): the same main() the console script runs.
    out = tmp_path / "run"
    assert cli.main([*args, "--out", str(out)]) == 2
    stderr = capsys.readouterr().err
    assert len(stderr.strip().splitlines()) == 1, stderr
    for word in words:
        assert word in stderr
    assert not out.exists()


def test_training_is_reproducible(tmp_path: Path) -> None:
    family = SineFamily()
    runs = [_train(family, tmp_path / name, iterations=3, meta_batch=3) for name in ("a", "b")]
    rows = [
        [json.loads(line) for line in (r / "metrics.jsonl").read_text().splitlines()] for r in runs
    ]
    assert [r["query"] for r in rows[0]] == [r["query"] for r in rows[1]]
    states = [load_checkpoint(r / "checkpoint.pt")["algorithm"]["model"] for r in runs]
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])


def test_resumed_run_equals_an_uninterrupted_one(tmp_path: Path) -> None:
    family = SineFamily()
    whole = _train(family, tmp_path / "whole", iterations=6, meta_batch=3, checkpoint_every=3)
    part = _train(family, tmp_path / "part", iterations=3, meta_batch=3, checkpoint_every=3)
    # Baseline settings are evaluation-only, so a resumed run may change them.
    resumed = resume(part, overrides={"iterations": 6, "baseline_steps": 6}, progress=False)
    states = [load_checkpoint(r / "checkpoint.pt")["algorithm"]["model"] for r in (whole, resumed)]
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
    assert json.loads((resumed / "eval.json").read_text())["baseline"]["training"]["steps"] == 6
