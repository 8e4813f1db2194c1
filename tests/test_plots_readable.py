"""What the plots and console summaries show (issue 27, items 3 and 14): no mean over the tasks
that happened not to diverge drawn or printed as if it compared, titles that fit their figure,
RL lines and figures that say what their numbers are."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from matplotlib.figure import Figure
from supervised_helpers import omniglot_dir_fixture  # noqa: F401 - a fixture

import metaopt
from metaopt.cli import main
from metaopt.stats import task_summary
from metaopt.training import ProgressLog, evaluation_summary, resolve_config
from metaopt.training import plots as core_plots
from metaopt.training.progress import LOGGER
from rl import plots as rl_plots
from rl.tabular.family import MDPFamily
from supervised import plots as supervised_plots
from supervised.evaluation import meta_vs_baseline

STEPS = [0, 1, 5, 32]


def _survivors() -> tuple[torch.Tensor, torch.Tensor]:
    """Six tasks adapted for 0, 1, 5, 32 steps: at 32 steps four blow up (more than 100 times
    their loss before adaptation) and the two others end far below the baseline, so a mean
    over the survivors (0.05) looks like a win. The baseline's tasks all improve to 1.0."""
    meta = torch.tensor(
        [
            [2.0] * 6,
            [1.5] * 6,
            [3.0] * 6,
            [1e4, 1e5, 1e6, 1e7, 0.05, 0.05],
        ],
        dtype=torch.float64,
    )
    baseline = torch.tensor([[2.0] * 6, [1.8] * 6, [1.4] * 6, [1.0] * 6], dtype=torch.float64)
    return meta, baseline


@pytest.fixture
def figures(monkeypatch: pytest.MonkeyPatch) -> list[Figure]:
    """The figures the code saves, kept open (and closed at the end of the test)."""
    kept: list[Figure] = []
    close = plt.close
    monkeypatch.setattr(plt, "close", kept.append)
    yield kept
    for fig in kept:
        close(fig)


def _line(ax: Any, label: str) -> Any:
    (line,) = [line for line in ax.lines if line.get_label() == label]
    return line


def test_a_step_where_tasks_diverged_has_no_point_but_a_mark_with_the_count(
    tmp_path: Path, figures: list[Figure]
) -> None:
    meta, baseline = _survivors()
    evaluation = meta_vs_baseline(STEPS, meta, baseline, metric="mse")
    assert evaluation["by_steps"]["32"]["finite"]["mean"] == pytest.approx(0.05)  # the trap
    supervised_plots.plot_metric_vs_steps(
        tmp_path / "m.png", evaluation, title="t", ylabel="mse", trained_steps=1
    )
    (ax,) = figures[0].axes
    drawn = _line(ax, "meta-learned").get_ydata()
    np.testing.assert_array_equal(drawn[:3], [2.0, 1.5, 3.0])
    assert math.isnan(drawn[3])  # the line stops: no 0.05 below the baseline's 1.0
    np.testing.assert_allclose(_line(ax, "pretrained baseline").get_ydata(), [2, 1.8, 1.4, 1])
    assert [t.get_text() for t in ax.texts] == ["4/6\ndiverged"]
    assert core_plots.DIVERGED_LEGEND in [t.get_text() for t in ax.get_legend().get_texts()]


def test_the_console_says_diverged_with_the_count_and_prints_no_survivors_mean() -> None:
    meta, baseline = _survivors()
    text = evaluation_summary(meta_vs_baseline(STEPS, meta, baseline, metric="mse"))
    assert "after 32 steps: diverged on 4 of 6 tasks   (baseline 1.0000 ± 0.0000)" in text
    assert "0.05" not in text
    tasks = [_Quadratic(c) for c in (1.0, 2.0, float("nan"))]
    curves = metaopt.evaluate(metaopt.MAML(torch.nn.Linear(1, 1), inner_lr=0.1), tasks, (0, 1))
    assert "after   1 steps: diverged on 1 of 3 tasks" in str(curves)


class _Quadratic:
    def __init__(self, target: float) -> None:
        self.target = target

    def support_loss(self, model: torch.nn.Module) -> torch.Tensor:
        return ((model(torch.ones(1, 1)) - self.target) ** 2).mean()

    query_loss = support_loss


def test_rl_adaptation_stops_the_line_where_tasks_diverged_and_marks_the_trained_steps(
    tmp_path: Path, figures: list[Figure]
) -> None:
    returns = np.array([[10.0, 11.0, 12.0], [11.0, 12.0, 13.0], [9.0, np.nan, np.nan]])
    evaluation = {
        "tasks": 3,
        "trained_steps": 2,
        "by_steps": {str(k): task_summary(row) for k, row in enumerate(returns)},
        "baseline": {"by_steps": {str(k): task_summary(returns[0]) for k in range(3)}},
    }
    rl_plots.plot_adaptation(tmp_path / "a.png", evaluation, "maml")
    (ax,) = figures[0].axes
    drawn = _line(ax, "meta-learned").get_ydata()
    assert list(drawn[:2]) == [11.0, 12.0] and math.isnan(drawn[2])
    assert [t.get_text() for t in ax.texts] == ["2/3\ndiverged"]
    (trained,) = [line for line in ax.lines if line.get_label() == "meta-trained for 2 steps"]
    assert list(trained.get_xdata()) == [2, 2]


def test_text_outside_figure_finds_a_title_cut_at_the_edge() -> None:
    fig, ax = plt.subplots(figsize=(3, 2))
    ax.set_title("short")
    fig.tight_layout()
    assert core_plots.text_outside_figure(fig) == []
    ax.set_title("a title far too long for a figure three inches wide, cut at both edges")
    (cut,) = core_plots.text_outside_figure(fig)
    assert cut.startswith("'a title far too long")
    plt.close(fig)


@pytest.fixture
def cut_texts(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[str]]:
    """``{PNG name: texts outside its figure}`` for every figure saved during the test."""
    found: dict[str, list[str]] = {}
    savefig = Figure.savefig

    def checked(fig: Figure, fname: Any, *args: Any, **kwargs: Any) -> Any:
        title = fig.get_suptitle() or fig.axes[0].get_title()
        found[f"{len(found)}: {title}"] = core_plots.text_outside_figure(fig)
        return savefig(fig, fname, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", checked)
    return found


#: The README's commands (`metaopt train FAMILY ...`, `metaopt compare sine`), each on a budget of
#: a few iterations and tasks: the figures are the same, their titles and labels as long.
SMALL = ["--iterations", "3", "--eval-tasks", "12", "--quiet"]
SUPERVISED = [*SMALL, "--baseline-steps", "3"]
RL = [*SMALL, "--eval-every", "2", "--test-tasks", "4", "--meta-batch", "4"]
COMMANDS = {
    "sine": ["train", "sine", *SUPERVISED],
    "sine-metasgd": ["train", "sine", "--algo", "metasgd", "--shots", "10", *SUPERVISED],
    "sine-reptile": ["train", "sine", "--preset", "reptile", *SUPERVISED],
    "classify": ["train", "classify", *SUPERVISED],
    "mdp": ["train", "mdp", "--algo", "maml", "--preset", "tuned", *RL],
    "nav2d": ["train", "nav2d", *RL, "--pretrain-iterations", "2", "--horizon", "10"],
}


@pytest.mark.parametrize("name", COMMANDS)
def test_every_text_of_the_readme_commands_figures_lies_within_the_figure(
    name: str, tmp_path: Path, cut_texts: dict[str, list[str]]
) -> None:
    assert main([*COMMANDS[name], "--out", str(tmp_path / "run")]) == 0
    pngs = list((tmp_path / "run").glob("*.png"))
    assert len(pngs) >= 2 and len(cut_texts) == len(pngs)
    assert {figure: cut for figure, cut in cut_texts.items() if cut} == {}


@pytest.mark.slow
def test_the_omniglot_figures_fit_too(
    omniglot_dir: Path, tmp_path: Path, cut_texts: dict[str, list[str]]
) -> None:
    argv = ["train", "omniglot", "--data-dir", str(omniglot_dir), *SUPERVISED]
    argv += ["--train-classes", "12", "--val-classes", "3"]  # what the fixture holds
    assert main([*argv, "--out", str(tmp_path / "run")]) == 0
    assert len(cut_texts) >= 2 and {png: cut for png, cut in cut_texts.items() if cut} == {}


@pytest.mark.slow
def test_the_compare_report_figures_fit(tmp_path: Path, cut_texts: dict[str, list[str]]) -> None:
    argv = ["compare", "sine", "--iterations", "4", "--steps", "1,2", "--checkpoints", "1"]
    argv += ["--repeats", "1", "--heldout-tasks", "4", "--batches", "1", "--quiet"]
    assert main([*argv, "--report", str(tmp_path / "report")]) == 0
    assert len(cut_texts) >= 3 and {png: cut for png, cut in cut_texts.items() if cut} == {}


def test_rl_progress_lines_give_the_returns_and_name_the_losses_as_surrogates(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER.name)
    row = {
        "query": -29.99,
        "support_before": 24.9,
        "support_after": 128.6,
        "train_pre_return": 10.05,
        "train_post_return": 11.74,
    }
    log = ProgressLog("mdp/maml", 1, describe=MDPFamily().progress_text)
    log.on_iteration_start(1, None)  # type: ignore[arg-type]
    log.on_iteration_end(1, row)
    (line,) = caplog.messages
    assert "return 10.05 -> 11.74 (before -> after adaptation)" in line
    assert "A2C surrogate losses (sign not meaningful): query -29.99, support 24.9 -> 128.6" in line
    plain = ProgressLog("sine/maml", 1, describe=lambda row: None)  # a family without one
    plain.on_iteration_start(1, None)  # type: ignore[arg-type]
    plain.on_iteration_end(1, row)
    assert "query -29.99, support 24.9 -> 128.6;" in caplog.messages[1]


def test_mdp_runs_log_the_returns(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["train", "mdp", "--iterations", "2", "--eval-tasks", "4", "--eval-every", "0"]
    assert main([*argv, "--out", str(tmp_path / "run")]) == 0
    err = capsys.readouterr().err
    assert "mdp/maml iteration 2/2 (100%): return " in err and "A2C surrogate losses" in err


def test_the_rl_progress_bar_gives_the_returns_not_a_surrogate_loss(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    family = MDPFamily()
    overrides = {"iterations": 2, "eval_tasks": 4, "eval_every": 0, "out": str(tmp_path / "run")}
    metaopt.training.train(family, resolve_config(family, overrides), progress=True)
    bar = capsys.readouterr().err
    assert "return " in bar and "(before -> after adaptation)" in bar and "query=" not in bar


def _rows(n: int, spike: float = 0.0) -> list[dict[str, Any]]:
    rows = []
    for i in range(1, n + 1):
        loss = 1.0 + 0.1 * math.sin(i) + (spike if i == 1 else 0.0)
        rows.append({"iteration": i, "support_before": loss, "support_after": loss, "query": loss})
    return rows


def test_the_training_curve_is_not_squashed_by_the_first_iteration_s_spike(
    tmp_path: Path, figures: list[Figure]
) -> None:
    core_plots.plot_training_curve(tmp_path / "t.png", _rows(200, spike=5000.0), "mdp", "maml")
    (ax,) = figures[0].axes
    low, high = ax.get_ylim()
    assert high < 2 and low > 0.5  # the curves fill the panel
    (note,) = [t.get_text() for t in ax.texts]
    assert "off the scale, the first at iteration 1" in note
    core_plots.plot_training_curve(tmp_path / "u.png", _rows(200), "mdp", "maml")
    assert list(figures[1].axes[0].texts) == []  # nothing to leave out: the whole range


def test_meta_iteration_and_step_axes_have_whole_number_ticks(
    tmp_path: Path, figures: list[Figure]
) -> None:
    rows = [{**row, "train_pre_return": 1.0, "train_post_return": 2.0} for row in _rows(3)]
    rows = [{**row, "train_pre_entropy": 1.5} for row in rows]
    core_plots.plot_training_curve(tmp_path / "t.png", rows, "mdp", "maml")
    rl_plots.plot_returns(tmp_path / "r.png", rows, {}, "maml", max_entropy=math.log(5))
    for fig in figures:
        fig.canvas.draw()
        for ax in fig.axes:
            ticks = ax.get_xticks()
            assert len(ticks) >= 2 and all(float(t).is_integer() for t in ticks), ticks


def test_the_entropy_curve_stands_apart_from_the_uniform_reference(
    tmp_path: Path, figures: list[Figure]
) -> None:
    uniform = math.log(5)
    rows = [
        {"iteration": i, "train_pre_return": 1.0, "train_post_return": 2.0, "train_pre_entropy": uniform - 0.01}
        for i in range(1, 30)
    ]  # fmt: skip
    rl_plots.plot_returns(tmp_path / "r.png", rows, {}, "maml", max_entropy=uniform)
    below = figures[0].axes[1]
    (entropy,) = [line for line in below.lines if line.get_label().startswith("policy entropy")]
    (reference,) = [line for line in below.lines if line.get_label().startswith("uniform")]
    assert entropy.get_zorder() > reference.get_zorder()  # drawn on top of it
    assert entropy.get_color() != reference.get_color()
    assert entropy.get_linestyle() != reference.get_linestyle()
    assert entropy.get_linewidth() > reference.get_linewidth()
    assert below.get_ylim()[1] > 1.1 * uniform  # the reference is not the frame's edge
    legend = [t.get_text() for t in below.get_legend().get_texts()]
    assert any(text.startswith("uniform policy") for text in legend)
