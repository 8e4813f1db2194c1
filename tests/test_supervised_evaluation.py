"""Evaluation pieces: intervals, divergence, the baseline and its cache, the metric plot."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from metaopt.stats import task_summary
from metaopt.training.config import resolve_config
from supervised.evaluation import load_or_train_baseline, meta_vs_baseline
from supervised.plots import plot_metric_vs_steps
from supervised.sine.family import SineFamily


def test_summary_is_mean_and_normal_interval() -> None:
    values = np.random.default_rng(0).normal(3.0, 2.0, size=400)
    summary = task_summary(torch.as_tensor(values))
    assert summary["mean"] == pytest.approx(float(np.mean(values)))
    expected = 1.959964 * float(np.std(values, ddof=1)) / math.sqrt(400)
    assert summary["ci95"] == pytest.approx(expected, rel=1e-5)


def test_divergence_is_reported_not_hidden() -> None:
    values = np.array([1.0, 2.0, np.inf, 3.0, np.inf])
    summary = task_summary(values)
    assert summary["mean"] == math.inf and summary["diverged"] == 2
    assert summary["finite"]["tasks"] == 3 and summary["finite"]["mean"] == pytest.approx(2.0)
    assert math.isnan(task_summary(np.array([np.nan, 1.0]))["mean"])


def test_paired_blocks() -> None:
    meta = torch.tensor([[3.0, 2.0, 4.0], [1.0, 0.5, 2.0]], dtype=torch.float64)
    base = torch.tensor([[3.0, 2.0, 4.0], [2.0, 1.5, 2.5]], dtype=torch.float64)
    block = meta_vs_baseline([0, 1], meta, base, metric="mse")
    assert block["tasks"] == 3 and block["steps"] == [0, 1]
    assert block["by_steps"]["1"]["mean"] == pytest.approx(3.5 / 3)
    assert block["meta_minus_baseline"]["1"]["mean"] == pytest.approx(-2.5 / 3)
    assert block["after_minus_before"]["1"]["mean"] == pytest.approx(-5.5 / 3)
    assert block["baseline"]["after_minus_before"]["0"] == {"mean": 0.0, "ci95": 0.0}
    json.dumps(block)  # plain JSON types


def test_baseline_learns_the_pooled_regression_and_is_cached(tmp_path: Path) -> None:
    family = SineFamily()
    config = resolve_config(family, {"baseline_steps": 300})
    held_out = family.sample_batch(config, np.random.default_rng(5), 200, split="test")

    def pooled_mse(model: torch.nn.Module) -> float:
        with torch.no_grad():
            return float(((model(held_out.query_x) - held_out.query_y) ** 2).mean())

    untrained = family.baseline(resolve_config(family, {"baseline_steps": 0}), None)
    trained = family.baseline(config, tmp_path)
    # The mean of y over tasks is (2/π)·E[A]·cos(x) ≈ 1.62 cos(x), not 0: a network trained on
    # pooled tasks learns it, an untrained one predicts about 0.
    x = torch.linspace(-5, 5, 50).unsqueeze(-1)
    with torch.no_grad():
        error = (trained(x) - 2 / math.pi * 2.55 * torch.cos(x)).abs().mean().item()
    assert error < 0.5
    assert pooled_mse(trained) < pooled_mse(untrained) - 0.5

    stamp = (tmp_path / "baseline.pt").stat().st_mtime_ns
    again = family.baseline(
        resolve_config(family, {"baseline_steps": 300, "algo": "reptile"}), tmp_path
    )
    assert (tmp_path / "baseline.pt").stat().st_mtime_ns == stamp  # the algorithm is not part of it
    assert all(
        torch.equal(p, q) for p, q in zip(trained.parameters(), again.parameters(), strict=True)
    )
    family.baseline(resolve_config(family, {"baseline_steps": 10}), tmp_path)
    assert (tmp_path / "baseline.pt").stat().st_mtime_ns != stamp  # another budget: retrained


def test_baseline_training_is_deterministic() -> None:
    family = SineFamily()
    config = resolve_config(family, {"baseline_steps": 20})
    sample = lambda rng, n: family.sample_batch(config, rng, n)  # noqa: E731
    a = load_or_train_baseline(config, lambda: family.make_model(config), sample, None)
    b = load_or_train_baseline(config, lambda: family.make_model(config), sample, None)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))


def test_metric_plot_survives_divergence(tmp_path: Path) -> None:
    meta = torch.tensor([[1.0, 2.0], [0.5, math.inf]], dtype=torch.float64)
    base = torch.tensor([[1.0, 2.0], [0.8, 1.5]], dtype=torch.float64)
    block = meta_vs_baseline([0, 1], meta, base, metric="mse")
    evaluation = {**block, "protocol_10pt": block}
    path = plot_metric_vs_steps(tmp_path / "plot.png", evaluation, title="t", ylabel="mse")
    assert path.stat().st_size > 1000
