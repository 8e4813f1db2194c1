"""``metaopt train mdp``: the family through the one training loop and the command line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from metaopt.cli import main
from metaopt.training import evaluate_run, train
from metaopt.training.config import resolve_config
from metaopt.training.family import ALGORITHMS, ConfigError
from metaopt.training.registry import get_family
from rl.tabular.family import MDPConfig, MDPFamily

TINY = {
    "iterations": 3,
    "meta_batch": 4,
    "trajectories": 5,
    "eval_every": 2,
    "test_tasks": 6,
    "eval_tasks": 8,
    "hidden_sizes": (8,),
}


def test_the_family_is_found_through_its_entry_point() -> None:
    family = get_family("mdp")
    assert isinstance(family, MDPFamily)
    defaults = MDPConfig()
    # The seed's settings (TorchOpt's MAML-RL example).
    assert (defaults.num_states, defaults.num_actions, defaults.horizon) == (10, 5, 10)
    assert (defaults.meta_batch, defaults.trajectories, defaults.iterations) == (40, 20, 500)
    assert (defaults.gamma, defaults.gae_lambda, defaults.value_coef) == (0.99, 0.95, 0.5)
    assert (defaults.inner_lr, defaults.outer_lr, defaults.inner_steps) == (0.1, 1e-3, 1)
    assert defaults.hidden_sizes == (32, 32) and defaults.test_tasks >= 200


def test_imaml_is_refused_by_name() -> None:
    with pytest.raises(ConfigError, match="--algo imaml is not available for RL families"):
        resolve_config(MDPFamily(), {**TINY, "algo": "imaml"})


@pytest.mark.parametrize("algo", [*(a for a in ALGORITHMS if a != "imaml"), "anil"])
def test_smoke_meta_training(algo: str, tmp_path: Path) -> None:
    family = MDPFamily()
    extra: dict[str, object] = {"inner_steps": 2} if algo == "reptile" else {}
    if algo == "anil":  # MAML with only the policy's last layer adapted
        algo, extra = "maml", {"adapt": "anil"}
    out = str(tmp_path / algo)
    config = resolve_config(family, {**TINY, **extra, "algo": algo, "out": out})
    run_dir = train(family, config, progress=False)
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 3
    assert all(
        np.isfinite(r["train_pre_return"]) and np.isfinite(r["train_post_return"]) for r in rows
    )
    assert (
        "test_score" in rows[1]
        and "test_post_return_ci95" in rows[1]
        and "test_score" not in rows[0]
    )
    evaluation = json.loads((run_dir / "eval.json").read_text())
    assert evaluation["metric"] == "return" and evaluation["tasks"] == 8
    trained = str(config.inner_steps)
    assert {"0", trained} <= set(evaluation["by_steps"])
    for key in ("random", "optimal", "normalized_score", "post_minus_pre"):
        assert set(evaluation[key]) >= {"mean", "ci95"}
    assert evaluation["random"]["mean"] < evaluation["optimal"]["mean"]
    for name in ("rl_returns.png", "rl_adaptation.png", "training_curve.png", "checkpoint.pt"):
        assert (run_dir / name).is_file()


def test_evaluation_is_reproducible_and_uses_held_out_tasks(tmp_path: Path) -> None:
    family = MDPFamily()
    config = resolve_config(family, {**TINY, "iterations": 1, "out": str(tmp_path / "run")})
    run_dir = train(family, config, progress=False)
    first = json.loads((run_dir / "eval.json").read_text())
    again = evaluate_run(run_dir)
    assert again["by_steps"] == first["by_steps"]
    more = evaluate_run(run_dir, steps=[0, 3])
    assert set(more["by_steps"]) == {"0", "3"} and more["trained_steps"] == 1
    # Held-out tasks come from eval_seed mixed with a stream tag: not the training stream,
    # even when seed == eval_seed.
    same = MDPConfig(seed=5, eval_seed=5)
    train_tasks = family.sample_tasks(same, np.random.default_rng(same.seed), 3).mdps
    test_tasks = family.test_mdps(same, 3)
    assert not np.allclose(train_tasks.reward_means, test_tasks.reward_means)


def test_cli_trains_and_reports(tmp_path: Path, capsys) -> None:
    out = tmp_path / "cli"
    argv = ["train", "mdp", "--algo", "metasgd", "--iterations", "2", "--meta-batch", "3"]
    argv += [
        "--trajectories",
        "4",
        "--eval-every",
        "0",
        "--eval-tasks",
        "5",
        "--hidden-sizes",
        "8,8",
    ]
    assert main([*argv, "--quiet", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "metric: return over 5 held-out tasks" in printed
    assert json.loads((out / "config.json").read_text())["config"]["hidden_sizes"] == [8, 8]


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--gamma", "1.5", "--gamma must be in [0, 1], got 1.5"),
        ("--gae-lambda", "-1", "--gae-lambda must be in [0, 1], got -1.0"),
        ("--num-states", "0", "--num-states must be an integer >= 1, got 0"),
        ("--horizon", "0", "--horizon must be an integer >= 1, got 0"),
        ("--trajectories", "0", "--trajectories must be an integer >= 1, got 0"),
        ("--value-coef", "nan", "--value-coef must be a finite number >= 0, got nan"),
        ("--hidden-sizes", "0", "--hidden-sizes must be comma-separated integers >= 1"),
    ],
)
def test_bad_flags_exit_with_one_line(flag: str, value: str, message: str, capsys) -> None:
    assert main(["train", "mdp", flag, value]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err


def test_config_error_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="--test-tasks must be an integer >= 1, got 0"):
        resolve_config(MDPFamily(), {"test_tasks": 0})


@pytest.mark.parametrize("algo_name", ["maml", "metasgd"])
def test_evaluation_curve_is_the_same_adapting_task_by_task_or_all_at_once(algo_name: str) -> None:

    import metaopt
    from rl.evaluation import adaptation_returns

    family, config = MDPFamily(), MDPConfig(hidden_sizes=(8,), trajectories=5)
    curves = []
    for engine in ("loop", "vmap"):
        torch.manual_seed(0)
        model = family.make_model(config)
        cls = metaopt.MetaSGD if algo_name == "metasgd" else metaopt.MAML
        algo = cls(model, inner_lr=0.5, inner_steps=1, engine=engine)
        curves.append(adaptation_returns(algo, family.test_batch(config, 6), 3))
    assert curves[0].shape == (4, 6)
    torch.testing.assert_close(curves[0], curves[1])
    with pytest.raises(ValueError, match="fresh MDPTaskBatch"):
        batch = family.test_batch(config, 2)
        batch[0].sample_returns(model)
        adaptation_returns(algo, batch, 1)


def test_summaries_report_diverged_tasks_instead_of_a_number() -> None:
    from metaopt.stats import task_summary
    from rl.evaluation import summarize

    assert summarize(np.array([1.0, 3.0]))["mean"] == 2.0
    diverged = summarize(np.array([1.0, np.nan, np.nan]))
    # The keys of the supervised families' eval.json: `diverged`, and `finite` for the others.
    assert np.isnan(diverged["mean"]) and diverged["diverged"] == 2
    assert diverged["finite"] == {"mean": 1.0, "ci95": float("inf"), "tasks": 1}
    values = np.array([1.0, 2.5, np.nan, 4.0, np.inf])
    assert json.dumps(summarize(values)) == json.dumps(task_summary(values))  # NaN == NaN


def test_rl_figures_show_the_diverged_count_without_a_mean_and_say_what_references_average(
    tmp_path: Path, monkeypatch
) -> None:
    import rl.plots as plots

    figures = []
    monkeypatch.setattr(plots, "save_figure", lambda fig, path, **_: figures.append(fig))
    point = {"mean": 10.0, "ci95": 0.5}
    split = {"mean": float("nan"), "ci95": float("inf"), "diverged": 3,
             "finite": {"mean": 12.0, "ci95": 0.4, "tasks": 97}}  # fmt: skip
    old = {"mean": float("nan"), "ci95": float("nan"), "diverged_tasks": 100}  # an older run's
    evaluation = {
        "tasks": 100,
        "by_steps": {"0": point, "1": point, "5": point},
        "baseline": {"by_steps": {"0": point, "1": split, "5": old}},
        "optimal": {"mean": 21.96, "ci95": 0.1},
        "random": {"mean": 5.0, "ci95": 0.1},
    }
    plots.plot_adaptation(tmp_path / "a.png", evaluation, "maml")
    plots.plot_returns(tmp_path / "r.png", [], {"optimal": 22.08}, "maml", reference_tasks=40)
    adaptation, returns = (fig.axes[0] for fig in figures)
    texts = [t.get_text() for t in adaptation.texts]
    assert texts == ["3/100\ndiverged", "100/100\ndiverged"]
    (baseline_line,) = [line for line in adaptation.lines if line.get_label().endswith("baseline)")]
    # Issue 27, item 3: the line stops where tasks diverged (no mean over the other 97).
    assert baseline_line.get_ydata()[0] == 10.0 and np.isnan(baseline_line.get_ydata()[1:]).all()
    labels = adaptation.get_legend_handles_labels()[1]
    assert "optimal policy (21.96, mean over the 100 tasks)" in labels
    assert (
        "optimal policy (22.08, mean over the 40 tasks)" in returns.get_legend_handles_labels()[1]
    )


def test_meta_training_makes_adaptation_pay_off(tmp_path: Path) -> None:
    """A short MAML run: one inner step at lr 0.3 barely helps the initial policy, but after 80
    meta-iterations the post-adaptation return of the training tasks is clearly above the
    pre-adaptation return (z > 3 over the last 30 iterations) and above where it started."""
    family = MDPFamily()
    config = resolve_config(
        family,
        {
            "iterations": 80,
            "inner_lr": 0.3,
            "eval_every": 0,
            "eval_tasks": 10,
            "out": str(tmp_path),
        },
    )
    run_dir = train(family, config, progress=False)
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    gain = np.array([r["train_post_return"] - r["train_pre_return"] for r in rows])
    late = gain[-30:]
    assert late.mean() / (late.std(ddof=1) / np.sqrt(late.size)) > 3
    assert late.mean() > gain[:10].mean() + 0.3


def test_an_interrupted_run_resumes_bit_for_bit(tmp_path: Path) -> None:
    """All sampling randomness comes from the loop's generator, which checkpoints save."""
    from metaopt.training import resume

    family = MDPFamily()
    common = {**TINY, "iterations": 4, "eval_every": 0, "checkpoint_every": 2}
    whole = train(family, resolve_config(family, {**common, "out": str(tmp_path / "a")}))
    part = train(
        family, resolve_config(family, {**common, "iterations": 2, "out": str(tmp_path / "b")})
    )
    resumed = resume(part, overrides={"iterations": 4}, progress=False)

    def rows(run_dir: Path) -> list[dict]:
        lines = (run_dir / "metrics.jsonl").read_text().splitlines()
        return [{k: v for k, v in json.loads(line).items() if k != "seconds"} for line in lines]

    assert rows(resumed) == rows(whole)


def test_presets_pin_their_estimator_and_tabular10_is_the_documented_configuration() -> None:
    from metaopt.training.config import resolve_config

    family = MDPFamily()
    assert resolve_config(family, {}).meta_gradient == "dice"  # the default: the one that learns
    for name in ("seed", "tuned", "tabular"):  # their documented numbers used the seed's
        assert resolve_config(family, {"preset": name}).meta_gradient == "seed"
    best = resolve_config(family, {"preset": "tabular10"})
    assert (best.hidden_sizes, best.inner_steps, best.inner_lr, best.meta_gradient) == (
        (),
        10,
        10.0,
        "dice",
    )


def test_the_outer_rate_schedule_applies_only_where_it_moves_something() -> None:
    """Under the trust region Adam moves only the critic: with no critic loss no schedule changes
    the run (so a resumed run may extend --iterations); with Adam, or a critic loss, --anneal
    anneals."""
    from rl.config import Nav2DConfig

    assert Nav2DConfig().outer_step == "trpo" and Nav2DConfig().schedule == "constant"
    assert Nav2DConfig(value_coef=0.5).schedule == "linear"
    assert Nav2DConfig(outer_optimizer="adam").schedule == "linear"
    assert Nav2DConfig(outer_optimizer="adam", anneal=False).schedule == "constant"
