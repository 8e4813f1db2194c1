"""``--clip-grad-norm``: the outer step sees the meta-gradient scaled to the norm asked for."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
import torch
from reliability_helpers import assert_same_run, family, interrupting, metrics

from metaopt.cli import main
from metaopt.training import TrainingInterrupted, load_run, resume, train
from metaopt.training.config import resolve_config

pytestmark = pytest.mark.usefixtures("one_thread")


def _run(out: Path, fam=None, **values: object) -> Path:
    fam = fam if fam is not None else family("rtoy")
    return train(fam, resolve_config(fam, {**values, "out": str(out)}), progress=False)


def _flat(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def _trained(run_dir: Path) -> torch.Tensor:
    return _flat(load_run(run_dir)[2].model)


def _initial(**values: object) -> torch.Tensor:
    """The parameters a run starts from: the loop seeds torch with ``seed``, then makes the
    model."""
    fam = family("rtoy")
    config = resolve_config(fam, values)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        return _flat(fam.make_model(config))


def test_an_sgd_step_with_clipping_moves_the_norm_asked_along_the_gradient(
    tmp_path: Path,
) -> None:
    # With plain SGD at rate 1 the step is minus the (clipped) meta-gradient: unclipped its
    # length is the logged norm, clipped it is the limit, in the same direction.
    sgd = {"outer_optimizer": "sgd", "outer_lr": 1.0, "iterations": 1}
    start = _initial(**sgd)
    free = _trained(_run(tmp_path / "free", **{**sgd, "clip_grad_norm": 1e9})) - start
    clipped = _trained(_run(tmp_path / "clipped", **{**sgd, "clip_grad_norm": 1e-3})) - start
    norm = metrics(tmp_path / "free")[0]["grad_norm"]
    assert metrics(tmp_path / "clipped")[0]["grad_norm"] == pytest.approx(norm, rel=1e-6)
    assert norm > 1e-2
    assert free.norm().item() == pytest.approx(norm, rel=1e-5)
    assert clipped.norm().item() == pytest.approx(1e-3, rel=1e-4)
    torch.testing.assert_close(clipped, free * (1e-3 / norm), rtol=1e-4, atol=1e-9)
    plain = _run(tmp_path / "plain", **sgd)  # without the flag: the same step, no new column
    assert "grad_norm" not in metrics(plain)[0]
    torch.testing.assert_close(_trained(plain) - start, free, rtol=0, atol=0)


def test_a_clipped_run_resumes_bit_identical(tmp_path: Path) -> None:
    values = {"clip_grad_norm": 0.05, "checkpoint_every": 4, "iterations": 12}
    full = _run(tmp_path / "full", **values)
    assert any(row["grad_norm"] > 0.05 for row in metrics(full))  # clipping did act
    with pytest.raises(TrainingInterrupted):
        _run(tmp_path / "cut", interrupting(family("rtoy"), 6, signal.SIGTERM), **values)
    resume(tmp_path / "cut", family=family("rtoy"), progress=False)
    assert_same_run(full, tmp_path / "cut")


def test_a_negative_limit_exits_2_naming_the_flag(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "rtoy", "--clip-grad-norm", "-1", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "--clip-grad-norm must be a finite number >= 0, got -1" in err
    assert len(err.strip().splitlines()) == 1
