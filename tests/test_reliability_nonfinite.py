"""A NaN/inf loss or meta-gradient stops training naming iteration, task and quantity, after saving
the last good state; ``skip_nonfinite`` skips such batches and counts them instead."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from reliability_helpers import metrics

from metaopt.cli import main
from metaopt.training import NonFiniteError, resume, train
from metaopt.training.checkpoint import load_checkpoint
from metaopt.training.config import resolve_config
from metaopt.training.registry import get_family

pytestmark = pytest.mark.usefixtures("one_thread")

POISONED = {"iterations": 12, "poison": 0.3}


def run(out: Path, **values: object) -> Path:
    family = get_family("rtoy")
    return train(family, resolve_config(family, {**values, "out": str(out)}), progress=False)


def stopped(out: Path, **values: object) -> tuple[NonFiniteError, int]:
    with pytest.raises(NonFiniteError) as error:
        run(out, **{**POISONED, **values})
    return error.value, error.value.iteration


@pytest.mark.parametrize("algo", ["maml", "fomaml", "metasgd", "reptile"])
def test_nan_loss_stops_and_saves_the_last_good_state(tmp_path: Path, algo: str) -> None:
    error, k = stopped(tmp_path, algo=algo)
    assert k > 1
    assert re.fullmatch(
        rf"iteration {k}: query loss of task 1 is nan; the last good state \(iteration {k - 1}\) "
        rf"is saved in {re.escape(str(tmp_path / 'checkpoint.pt'))}; --skip-nonfinite skips such "
        "batches",
        str(error),
    )
    assert load_checkpoint(tmp_path / "checkpoint.pt")["iteration"] == k - 1
    assert [row["iteration"] for row in metrics(tmp_path)] == list(range(1, k))


@pytest.mark.parametrize("algo", ["maml", "fomaml", "metasgd"])
def test_nan_meta_gradient_names_the_parameter_and_the_task(tmp_path: Path, algo: str) -> None:
    error, k = stopped(tmp_path, algo=algo, poison_kind="grad")
    assert (
        f"iteration {k}: meta-gradient of meta-parameter 0 (shape (2,)) is not finite "
        "(task 1 alone gives a non-finite meta-gradient)"
    ) in str(error)
    assert load_checkpoint(tmp_path / "checkpoint.pt")["iteration"] == k - 1


def test_skip_nonfinite_skips_and_counts(tmp_path: Path) -> None:
    rows = metrics(run(tmp_path, **POISONED, skip_nonfinite=True))
    assert len(rows) == 12
    skipped = [row["iteration"] for row in rows if row["query"] is None]  # NaN is logged as null
    assert skipped, "the poison never struck: pick another seed"
    assert [row["skipped"] for row in rows] == [
        sum(1 for s in skipped if s <= row["iteration"]) for row in rows
    ]
    assert load_checkpoint(tmp_path / "checkpoint.pt")["skipped"] == len(skipped)


def test_resume_a_stopped_run_with_skip_nonfinite(tmp_path: Path) -> None:
    """The stopped run's checkpoint holds the random state from before the bad batch, so resuming
    with --skip-nonfinite meets the same batch, skips it, and ends like a run that skipped all along."""
    stopped(tmp_path / "stopped")
    resume(tmp_path / "stopped", overrides={"skip_nonfinite": True}, progress=False)
    skipping = run(tmp_path / "skipping", **POISONED, skip_nonfinite=True)
    first = load_checkpoint(tmp_path / "stopped" / "checkpoint.pt")
    second = load_checkpoint(skipping / "checkpoint.pt")
    model, other = first["algorithm"]["model"], second["algorithm"]["model"]
    assert all(model[name].equal(other[name]) for name in model)
    assert first["skipped"] == second["skipped"] >= 1

    def strip(rows: list[dict]) -> list[dict]:
        return [{k: v for k, v in row.items() if k != "skipped"} for row in rows]

    assert strip(metrics(tmp_path / "stopped")) == strip(metrics(skipping))


def test_an_outer_step_that_overflows_stops(tmp_path: Path) -> None:
    # Every batch has a finite meta-gradient of ~1e300, which an SGD step at 1e100 overflows.
    with pytest.raises(NonFiniteError) as error:
        run(tmp_path, poison=1.0, poison_kind="huge", outer_optimizer="sgd", outer_lr=1e100)
    assert str(error.value) == (
        "iteration 1: the outer step made a meta-parameter non-finite (outer learning rate too "
        "large?); nothing saved, the run has no checkpoint yet"
    )


def test_cli_reports_non_finite_in_one_line_with_status_1(tmp_path: Path, capsys) -> None:
    argv = ["train", "rtoy", "--poison", "0.3", "--iterations", "12", "--quiet"]
    assert main([*argv, "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("metaopt: error: iteration ") and "query loss of task 1 is nan" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
