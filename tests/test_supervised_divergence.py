"""Divergence in supervised curves is counted and shown, never averaged into a spike (issue 17, 1)."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import pytest
import torch

from metaopt.training import evaluation_summary
from supervised import plots
from supervised.evaluation import DIVERGENCE_FACTOR, mark_diverged, meta_vs_baseline

STEPS = [0, 1, 5]


def _curves() -> tuple[torch.Tensor, torch.Tensor]:
    """Five tasks; task 0 blows up to 1e28 at 5 steps (finite), task 1 gets 50× worse (not
    divergence), the others improve. The baseline improves everywhere."""
    meta = torch.tensor(
        [
            [2.0, 1.0, 3.0, 4.0, 5.0],
            [4.0, 10.0, 2.0, 3.0, 4.0],
            [1e28, 50.0, 1.0, 2.0, 3.0],
        ],
        dtype=torch.float64,
    )
    return meta, meta[:1].expand(3, -1) * torch.tensor([[1.0], [0.8], [0.5]], dtype=torch.float64)


def test_a_loss_above_the_factor_times_its_start_is_diverged() -> None:
    meta, _ = _curves()
    marked = mark_diverged(STEPS, meta)
    assert torch.isinf(marked[2, 0]) and marked[2, 1] == 50.0
    assert torch.equal(marked[:2], meta[:2])
    exact = meta.clone()
    exact[2, 1] = DIVERGENCE_FACTOR * 1.0  # at the factor: not yet diverged
    assert mark_diverged(STEPS, exact)[2, 1] == DIVERGENCE_FACTOR
    assert torch.equal(mark_diverged([1, 5], meta[1:]), meta[1:])  # no step 0: nothing to compare


def test_the_block_reports_the_other_tasks_and_the_count_for_losses_only() -> None:
    meta, base = _curves()
    block = meta_vs_baseline(STEPS, meta, base, metric="mse")
    five = block["by_steps"]["5"]
    assert five["diverged"] == 1
    assert five["finite"]["tasks"] == 4
    assert five["finite"]["mean"] == pytest.approx((50 + 1 + 2 + 3) / 4)
    assert "divergence" in block
    accuracy = meta_vs_baseline(STEPS, meta, base, metric="accuracy")  # higher is better
    assert "diverged" not in accuracy["by_steps"]["5"]


def test_the_console_prints_every_protocol_with_its_diverged_count() -> None:
    meta, base = _curves()
    evaluation = meta_vs_baseline(STEPS, base, base, metric="mse")
    evaluation["protocol_10pt"] = meta_vs_baseline(STEPS, meta, base, metric="mse")
    evaluation["protocol_10pt"]["description"] = "10 support points, plain SGD at lr 0.02"
    text = evaluation_summary(evaluation)
    assert "protocol_10pt: 10 support points, plain SGD at lr 0.02" in text
    # Issue 27, item 3: the count, not the other tasks' mean (14), which would not compare.
    assert "after  5 steps: diverged on 1 of 5 tasks" in text and "14.0000" not in text


def test_the_protocol_panel_has_no_spike_and_names_its_step_size(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    meta, base = _curves()
    evaluation = meta_vs_baseline(
        STEPS, base, base, metric="mse", extra={"adaptation": {"rule": "sgd", "lr": 0.01}}
    )
    evaluation["protocol_10pt"] = meta_vs_baseline(
        STEPS, meta, base, metric="mse", extra={"adaptation": {"rule": "sgd", "lr": 0.02}}
    )
    figures = []
    monkeypatch.setattr(plots.plt, "close", figures.append)
    plots.plot_metric_vs_steps(tmp_path / "m.png", evaluation, title="t", ylabel="mse")
    (figure,) = figures
    protocol = figure.axes[1]
    assert protocol.get_yscale() == "linear" and protocol.get_ylim()[1] < 100
    assert "plain SGD at 0.02" in protocol.get_title()
    assert "meta-trained for steps of 0.01: may diverge" in protocol.get_title()
    assert any(text.get_text() == "1/5\ndiverged" for text in protocol.texts)
    plt.close(figure)


def test_metaopt_eval_redraws_the_plots_of_the_new_evaluation(tmp_path: Path) -> None:
    """Issue 17, item 9: the PNGs beside eval.json show that evaluation, not the one before."""
    import reliability_helpers as rh

    from metaopt.training import evaluate_run, train
    from metaopt.training.config import resolve_config

    family = rh.family("rtoy")
    run_dir = train(family, resolve_config(family, {"out": str(tmp_path / "r")}), progress=False)
    picture = run_dir / "training_curve.png"
    picture.write_bytes(b"stale")
    evaluate_run(run_dir)  # the run's own evaluation (others of --tasks/--steps get own files)
    assert picture.read_bytes().startswith(b"\x89PNG")
