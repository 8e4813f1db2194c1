"""``metaopt compare`` on a small family registered in-process: outputs, numbers, command line."""

from __future__ import annotations

import csv
import io
import json
import math
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import metaopt
from metaopt.cli import main
from metaopt.tools import compare as mc
from metaopt.tools.compare.gradients import model_state
from metaopt.tools.compare.report import agreement_cell
from metaopt.training import load_run, train
from metaopt.training.config import resolve_config
from metaopt.training.family import TaskFamily, TrainConfig, option
from metaopt.training.registry import register_family


@dataclass
class WaveConfig(TrainConfig):
    meta_batch: int = option(3)
    iterations: int = option(4)
    inner_lr: float = option(0.1)
    outer_lr: float = option(0.01)
    eval_tasks: int = option(4)
    linear_support: bool = option(False, "support loss linear in θ (zero Hessian)")


class WaveTask:
    """Regression on a random sine; optionally a support loss that is linear in θ."""

    def __init__(self, rng: np.random.Generator, linear_support: bool) -> None:
        amplitude, phase = rng.uniform(0.5, 2.0), rng.uniform(0, np.pi)
        x = torch.as_tensor(rng.uniform(-3, 3, size=(12, 1)))
        self.x, self.y = x, amplitude * torch.sin(x + phase)
        self.c = float(rng.normal())
        self.linear_support = linear_support

    def support_loss(self, model: nn.Module) -> torch.Tensor:
        if self.linear_support:
            return sum((self.c * p).sum() for p in model.parameters())
        return ((model(self.x[:6]) - self.y[:6]) ** 2).mean()

    def query_loss(self, model: nn.Module) -> torch.Tensor:
        return ((model(self.x[6:]) - self.y[6:]) ** 2).mean()


@register_family
class WaveFamily(TaskFamily):
    name = "compare-wave"
    description = "sine regression with a tiny float64 MLP (compare tests)"
    config_class = WaveConfig
    metric = "mse"

    def make_model(self, config: TrainConfig) -> nn.Module:
        return nn.Sequential(nn.Linear(1, 8), nn.Tanh(), nn.Linear(8, 1)).double()

    def sample_tasks(self, config: TrainConfig, rng: np.random.Generator, num_tasks: int):
        return [WaveTask(rng, config.linear_support) for _ in range(num_tasks)]

    def periodic_eval(self, algo, config, *, group=None) -> dict[str, float]:
        return {"val_mse_after": 1.0, "val_mse_after_ci95": 0.1}

    def evaluate(self, algo, config, run_dir, request):
        tasks = self.sample_tasks(config, np.random.default_rng(config.eval_seed), 4)
        losses = []
        for task in tasks:
            with algo.adapt(task) as model:
                losses.append(task.query_loss(model).item())
        mean, ci = metaopt.mean_ci95(losses)
        return {
            "metric": "mse",
            "tasks": 4,
            "by_steps": {str(algo.inner_steps): {"mean": mean, "ci95": ci}},
        }


TINY = mc.CompareOptions(steps=(1, 3), checkpoints=2, repeats=1, heldout_tasks=3, batches=2)


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    family = WaveFamily()
    out = tmp_path_factory.mktemp("compare") / "report"
    results = mc.compare_methods(family, resolve_config(family, {}), out, TINY, progress=False)
    return out, results


def _rows(results: dict, method: str, iteration: int | None = None) -> list[dict]:
    return [
        r
        for r in results["gradients"]
        if r["method"] == method and (iteration is None or r["iteration"] == iteration)
    ]


def test_writes_every_output(report) -> None:
    out, results = report
    for name in (
        "report.md",
        "results.json",
        "config.json",
        "gradients.csv",
        "timing.csv",
        "curves.csv",
        "cosine_vs_steps.png",
        "curves_iterations.png",
        "curves_time.png",
    ):
        assert (out / name).is_file(), name
    assert json.loads((out / "results.json").read_text())["family"] == "compare-wave"
    text = (out / "report.md").read_text()
    assert "| point | method | 1 step | 3 steps |" in text and "## Learning curves" in text
    for method in ("maml", "fomaml", "metasgd", "reptile"):
        run = out / "runs" / method
        assert (run / "metrics.jsonl").is_file() and (run / "eval.json").is_file()
        assert load_run(run)[1].algo == method  # ordinary run directories
    # One CSV row per comparison over all of θ, one per layer (Sequential modules 0 and 2).
    with open(out / "gradients.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 3 * len(results["gradients"])
    assert {r["layer"] for r in rows} == {"all", "0", "2"}


def test_points_methods_and_ranges(report) -> None:
    _, results = report
    assert results["points"] == [0, 2, 4]
    assert len(results["gradients"]) == 3 * 2 * 4  # points × steps × (3 methods + other batch)
    for r in results["gradients"]:
        assert -1 - 1e-12 <= r["cosine"] <= 1 + 1e-12
        assert r["norm_ratio"] > 0 and r["norm"] > 0
        for layer in r["layers"].values():
            assert -1 - 1e-12 <= layer["cosine"] <= 1 + 1e-12
    # The snapshots are really later points of training: MAML's gradient changed.
    norms = {r["iteration"]: r["reference_norm"] for r in results["gradients"] if r["steps"] == 1}
    assert len(set(norms.values())) == 3
    assert len(results["interpretation"]) == 3 + 1 + 3 + 1  # gradients, reference, costs, curves


def test_metasgd_row_compares_its_rates_first_vs_second_order(report) -> None:
    # At the comparison points Meta-SGD's rates are inner_lr, where its θ-gradient is MAML's
    # exactly (tests/test_core_gradients.py): a θ row could only read 1.0000 (×1). The row
    # compares the rates' meta-gradient of first-order against second-order Meta-SGD instead,
    # here recomputed by hand at initialisation.
    out, results = report
    assert not _rows(results, "metasgd")
    family, seeds = WaveFamily(), mc.gradients.comparison_seeds(resolve_config(WaveFamily(), {}), 2)
    config = resolve_config(family, {})
    for r in _rows(results, "metasgd-rates", 0):
        cosines, ratios = [], []
        for seed in seeds:
            grads = []
            for first_order in (False, True):
                model = family.make_model(config)
                model.load_state_dict(mc.gradients.initial_state(family, config))
                algo = metaopt.MetaSGD(
                    model, inner_lr=0.1, inner_steps=r["steps"], first_order=first_order
                )
                algo.meta_backward(
                    family.sample_tasks(config, np.random.default_rng(seed), config.meta_batch)
                )
                grads.append(torch.cat([a.grad.flatten() for a in algo.inner_lrs]))
            second, first = grads
            cosines.append(float(first @ second / (first.norm() * second.norm())))
            ratios.append(float(first.norm() / second.norm()))
        assert r["cosine"] == pytest.approx(np.mean(cosines), abs=1e-9)
        assert r["norm_ratio"] == pytest.approx(np.mean(ratios), rel=1e-9)
        # One step: the rates' gradient −∇L^s(θ) ∘ ∇L^q(θ') has no second-order term, so the
        # first-order one is exact; from two steps on the Hessian enters and they differ.
        if r["steps"] == 1:
            assert r["cosine"] == pytest.approx(1.0, abs=1e-12)
        else:
            assert r["cosine"] < 1 - 1e-6
    text = (out / "report.md").read_text()
    assert "| init | Meta-SGD's rates, first vs second order |" in text
    assert "| Meta-SGD | 1.0000" not in text
    for r in _rows(results, "fomaml"):  # a curved support loss separates first and second order
        assert r["cosine"] < 1 - 1e-6


def test_timing_and_memory(report) -> None:
    _, results = report
    by = {(t["method"], t["steps"]): t for t in results["timing"]}
    assert set(by) == {(m, s) for m in ("maml", "fomaml", "metasgd", "reptile") for s in (1, 3)}
    assert all(t["median_s"] > 0 for t in by.values())
    # Second-order MAML keeps the graph of every inner step; first-order MAML and Reptile do not.
    assert by[("maml", 3)]["saved_peak_bytes"] > by[("maml", 1)]["saved_peak_bytes"]
    assert by[("fomaml", 3)]["saved_peak_bytes"] < by[("maml", 3)]["saved_peak_bytes"]
    assert by[("reptile", 3)]["saved_peak_bytes"] < by[("maml", 3)]["saved_peak_bytes"]


def test_compare_includes_imaml(tmp_path: Path, capsys) -> None:
    """iMAML runs torch.func transforms, which refuse the saved-tensor meter's hooks: its
    saved-tensor cell is n/a, and the allocator's peak measures every method."""
    argv = ["compare", "compare-wave", "--iterations", "2", "--steps", "1,3", "--checkpoints"]
    argv += ["1", "--repeats", "1", "--heldout-tasks", "2", "--methods", "imaml", "--reg", "10"]
    argv += ["--cg-steps", "20", "--report", str(tmp_path / "r"), "--quiet"]
    assert main(argv) == 0, capsys.readouterr().err
    results = json.loads((tmp_path / "r" / "results.json").read_text())
    assert results["methods"] == ["maml", "imaml"]
    rows = _rows(results, "imaml")
    assert {(r["iteration"], r["steps"]) for r in rows} == {(i, s) for i in (0, 2) for s in (1, 3)}
    assert all(-1 <= r["cosine"] <= 1 and r["norm_ratio"] > 0 for r in rows)
    by = {(t["method"], t["steps"]): t for t in results["timing"]}
    assert by[("imaml", 3)]["saved_peak_bytes"] is None
    assert by[("maml", 3)]["saved_peak_bytes"] > by[("maml", 1)]["saved_peak_bytes"]
    assert all(t["peak_bytes"] > 0 and t["median_s"] > 0 for t in by.values())
    report = (tmp_path / "r" / "report.md").read_text()
    assert "| iMAML | n/a | n/a |" in report and "| allocated, peak |" in report


def test_learning_curves(report) -> None:
    _, results = report
    assert results["family_curve_key"] == "val_mse_after"
    assert results["curve_every"] == 1
    for method, curve in results["curves"].items():
        points = curve["points"]
        assert [p["iteration"] for p in points] == [0, 1, 2, 3, 4], method
        seconds = [p["train_seconds"] for p in points]
        assert seconds == sorted(seconds) and seconds[-1] <= curve["train_seconds"] + 1e-9
        assert all(math.isfinite(p[mc.HELDOUT_KEY]) for p in points)
        assert curve["final_eval"]["at_trained_steps"]["mean"] > 0
    # Same seed, same initialisation: every method starts from the same held-out loss.
    starts = {c["points"][0][mc.HELDOUT_KEY] for c in results["curves"].values()}
    assert max(starts) - min(starts) < 1e-12


def test_snapshots_are_the_states_of_a_shorter_run(report, tmp_path: Path) -> None:
    # The gradient at "it 2" is MAML's gradient at the state a 2-iteration run ends in.
    _, results = report
    family = WaveFamily()
    run = train(
        family, resolve_config(family, {"iterations": 2, "out": str(tmp_path)}), progress=False
    )
    state = model_state(load_run(run)[2].model)
    config = resolve_config(family, {})
    expected = _rows(results, "fomaml", 2)[0]
    assert expected["steps"] == 1
    for seed, batch in zip(mc.comparison_seeds(config, 2), expected["per_batch"], strict=True):
        again = mc.meta_gradient(family, config, "fomaml", state, steps=1, task_seed=seed)
        reference = mc.meta_gradient(family, config, "maml", state, steps=1, task_seed=seed)
        assert mc.agreement(reference.theta, again.theta).cosine == pytest.approx(
            batch["cosine"], abs=1e-12
        )
    cosines = [b["cosine"] for b in expected["per_batch"]]
    assert expected["cosine"] == pytest.approx(np.mean(cosines))
    assert expected["cosine_sd"] == pytest.approx(np.std(cosines, ddof=1))


def test_first_order_equals_second_order_for_a_linear_support_loss(tmp_path: Path) -> None:
    # Zero support Hessian: (I − αH)ⁿ = I, so first-order MAML is exact (an independent check).
    family = WaveFamily()
    config = resolve_config(family, {"linear_support": True})
    options = mc.CompareOptions(
        methods=("fomaml",), steps=(1, 4), checkpoints=0, repeats=1, curves=False, batches=1
    )
    results = mc.compare_methods(family, config, tmp_path / "r", options, progress=False)
    rows = _rows(results, "fomaml")
    assert [r["steps"] for r in rows] == [1, 4]
    for r in rows:
        assert r["cosine"] == pytest.approx(1.0, abs=1e-12)
        assert r["norm_ratio"] == pytest.approx(1.0, abs=1e-12)
    assert results["curves"] == {} and not (tmp_path / "r" / "curves.csv").exists()
    # With one batch, "other batch" is an extra, independent meta-batch.
    (other,) = [r for r in _rows(results, mc.OTHER_BATCH) if r["steps"] == 1]
    assert len(other["per_batch"]) == 1 and other["cosine"] < 1 - 1e-6


def test_agreement_core() -> None:
    a = {
        "net.0.weight": torch.tensor([[1.0, 0.0]]),
        "net.0.bias": torch.tensor([0.0]),
        "head.weight": torch.tensor([[0.0, 3.0]]),
    }
    b = {k: 2 * v for k, v in a.items()}
    agree = mc.agreement(a, b)
    assert agree.cosine == pytest.approx(1.0) and agree.norm_ratio == pytest.approx(2.0)
    assert list(agree.layers) == ["net.0", "head"]
    flipped = dict(a, **{"head.weight": -a["head.weight"]})
    agree = mc.agreement(a, flipped)
    assert agree.layers["head"]["cosine"] == pytest.approx(-1.0)
    assert agree.layers["net.0"]["cosine"] == pytest.approx(1.0)
    assert agree.cosine == pytest.approx((1 - 9) / 10)
    assert mc.layer_of("a") == "a" and mc.layer_of("body.1.running_mean") == "body.1"
    assert math.isnan(mc.cosine(torch.zeros(3), torch.ones(3)))
    with pytest.raises(ValueError, match="different parameters"):
        mc.agreement(a, {"net.0.weight": a["net.0.weight"]})


def test_saved_tensor_meter_counts_what_autograd_keeps() -> None:
    w = torch.randn(100, dtype=torch.float64, requires_grad=True)
    with mc.SavedTensorMeter() as meter:
        y = torch.tanh(w)  # saves its output: 800 bytes
        z = torch.exp(y)  # saves its output: 800 more
        assert meter.live_bytes == 1600
        z.sum().backward()
        del y, z
    assert meter.peak_bytes == 1600 and meter.live_bytes == 0


def test_checkpoint_iterations_and_options() -> None:
    assert mc.checkpoint_iterations(100, 3) == [33, 67, 100]
    assert mc.checkpoint_iterations(2, 5) == [1, 2]
    assert mc.checkpoint_iterations(0, 3) == [] and mc.checkpoint_iterations(10, 0) == []
    assert mc.CompareOptions(methods=("reptile",)).all_methods == ("maml", "reptile")
    with pytest.raises(metaopt.ConfigError, match="--methods must be"):
        mc.CompareOptions(methods=("sgd",)).validate()
    with pytest.raises(metaopt.ConfigError, match="--steps must be integers >= 1"):
        mc.CompareOptions(steps=(0, 1)).validate()
    assert (
        mc.family_curve_key(
            ["test_post_minus_pre", "test_post_return_ci95", "test_post_return"], "return"
        )
        == "test_post_return"
    )
    assert mc.family_curve_key(["loss"], "mse") is None


def test_cli_compare(tmp_path: Path, capsys) -> None:
    out = tmp_path / "cli"
    argv = [
        "compare",
        "compare-wave",
        "--iterations",
        "2",
        "--steps",
        "1,2",
        "--checkpoints",
        "1",
        "--repeats",
        "1",
        "--heldout-tasks",
        "2",
        "--methods",
        "fomaml,reptile",
        "--report",
        str(out),
        "--quiet",
    ]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "# metaopt compare: compare-wave" in printed and f"report directory: {out}" in printed
    results = json.loads((out / "results.json").read_text())
    assert results["methods"] == ["maml", "fomaml", "reptile"] and results["points"] == [0, 2]
    # A non-empty report directory is refused, as metaopt never overwrites a report.
    assert main(argv) == 2
    assert "is not empty" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--algo", "fomaml"], "--algo does not apply to metaopt compare; use --methods"),
        (["--steps", "0,1"], "--steps must be integers >= 1"),
        (["--methods", "maml,sgd"], "--methods must be a comma-separated subset"),
        (["--repeats", "0"], "--repeats must be an integer >= 1"),
        (
            ["--truth-batches", "1"],
            "--truth-batches must be 0 (skip the comparison) or an integer >= 2",
        ),
        (
            ["--truth-batches", "-5"],
            "--truth-batches must be 0 (skip the comparison) or an integer >= 2",
        ),
        (["--inner-lr", "-1"], "--inner-lr must be a positive finite number"),
    ],
)
def test_cli_compare_user_errors(extra: list[str], message: str, tmp_path: Path, capsys) -> None:
    argv = ["compare", "compare-wave", "--report", str(tmp_path / "r"), "--quiet", *extra]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def _g(values: list[float], finite: bool = True) -> mc.MetaGradient:
    return mc.MetaGradient({"w": torch.tensor(values)}, None, 1.0, finite)


def test_non_finite_meta_gradients_are_counted_and_left_out() -> None:
    nan = float("nan")
    references = [_g([1.0, 0.0]), _g([1.0, 0.0]), _g([nan, 0.0], finite=False)]
    others = [_g([1.0, 0.0]), _g([0.0, 1.0]), _g([1.0, 0.0])]
    summary = mc.summarize_batches(references, others)
    assert summary["cosine"] == pytest.approx(0.5) and summary["nonfinite_reference"] == 1
    assert summary["nonfinite"] == 0 and len(summary["per_batch"]) == 3
    assert agreement_cell(summary, 3).endswith("[1/3 non-finite]")
    nothing = mc.summarize_batches(references[2:], others[2:])
    assert nothing["cosine"] is None and nothing["layers"]["w"]["cosine"] is None
    assert agreement_cell(nothing, 1) == "non-finite (1/1)"


def test_same_seed_same_comparison(report, tmp_path: Path) -> None:
    # Determinism (issue: identical results for every command): everything but the clocks repeats.
    _, first = report
    family = WaveFamily()
    second = mc.compare_methods(
        family, resolve_config(family, {}), tmp_path / "again", TINY, progress=False
    )
    assert first["gradients"] == second["gradients"]

    def without_clocks(value):
        if isinstance(value, dict):
            return {
                k: without_clocks(v)
                for k, v in value.items()
                if "seconds" not in k and k not in ("run_dir", "time")
            }
        if isinstance(value, list):
            return [without_clocks(v) for v in value]
        return value

    assert without_clocks(first["curves"]) == without_clocks(second["curves"])


def test_flags_are_generated_from_the_options_fields() -> None:
    import argparse

    from metaopt.training.config import dataclass_from_arguments

    parser = argparse.ArgumentParser()
    mc.add_compare_arguments(parser)
    given = vars(parser.parse_args([]))
    assert dataclass_from_arguments(mc.CompareOptions, given) == mc.CompareOptions()
    argv = ["--methods", "reptile", "--steps", "2,3", "--no-curves", "--truth-batches", "0"]
    given = vars(parser.parse_args(argv))
    assert dataclass_from_arguments(mc.CompareOptions, given) == mc.CompareOptions(
        methods=("reptile",), steps=(2, 3), curves=False, truth_batches=0
    )


def test_the_report_names_each_method_s_outer_step_where_they_differ() -> None:
    """nav2d's ``--outer-optimizer auto`` takes trpo for MAML and adam for Reptile: the report
    says so instead of "same outer optimiser"; runs of one optimiser, or results written before
    runs recorded theirs, keep the one-optimiser sentence."""
    from metaopt.tools.compare.report import outer_steps

    config = {"outer_optimizer": "auto", "outer_lr": 0.003}
    mixed = {"maml": {"outer_step": "trpo"}, "reptile": {"outer_step": "adam"}}
    assert outer_steps(mixed, config) == (
        "outer step by method (trpo for MAML (second order), adam for Reptile; lr 0.003)"
    )
    same = {"maml": {"outer_step": "adam"}, "reptile": {"outer_step": "adam"}}
    assert outer_steps(same, config) == "same outer optimiser (adam, lr 0.003) for every method"
    old = {"maml": {}, "reptile": {}}
    assert outer_steps(old, {**config, "outer_optimizer": "sgd"}).startswith(
        "same outer optimiser (sgd,"
    )


def _progress_argv(out: Path) -> list[str]:
    return [
        *["compare", "compare-wave", "--iterations", "2", "--steps", "1,2", "--checkpoints"],
        *["1", "--repeats", "1", "--heldout-tasks", "2", "--methods", "fomaml", "--report"],
        str(out),
    ]


_POINT = re.compile(
    r"^metaopt: compare compare-wave: meta-gradients: point (\d)/4 \(\d+%\): "
    r"iteration (\d), (\d) inner step\(s\); \S+ (?:s/point|points/s), ETA \S+$"
)


def test_cli_compare_off_a_terminal_prints_progress_lines(tmp_path: Path, capsys) -> None:
    """Issue 27, item 6: each stage and each training run says how far it is, as training does."""
    assert main(_progress_argv(tmp_path / "r")) == 0
    err = capsys.readouterr().err
    points = [m.groups() for m in map(_POINT.match, err.splitlines()) if m]
    # the points: (iteration 0, 2) × (1, 2 inner steps), one line each (4 steps: each a tenth)
    assert points == [
        ("1", "0", "1"),
        ("2", "0", "2"),
        ("3", "2", "1"),
        ("4", "2", "2"),
    ]
    assert "metaopt: compare compare-wave: timing: setting 2/2 (100%): 2 inner step(s);" in err
    assert "metaopt: compare-wave/maml iteration 2/2 (100%)" in err  # the runs' own lines
    assert "metaopt: compare-wave/fomaml iteration 2/2 (100%)" in err
    assert "|" not in err  # no bar
    assert "exact meta-gradient" not in err  # the family computes none: nothing announced


def test_cli_compare_on_a_terminal_shows_bars(tmp_path: Path, capsys, monkeypatch) -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    assert main(_progress_argv(tmp_path / "r")) == 0
    assert "# metaopt compare: compare-wave" in capsys.readouterr().out
    shown = terminal.getvalue()
    assert "compare compare-wave: meta-gradients: 100%" in shown and "4/4" in shown
    assert not any(map(_POINT.match, shown.splitlines()))
