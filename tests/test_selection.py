"""Model selection on validation tasks: best.pt, its resume, and the evaluations that use it.

The score that selects is scripted (a hook returns it per iteration, on a linear toy family), so
each test knows which iteration must win; one Omniglot run on the fixture covers the real thing.
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import torch
from reliability_helpers import RToyFamily, assert_bitwise_equal, evaluate_on_linear_tasks
from supervised_helpers import FIXTURE_SPLIT, omniglot_dir_fixture  # noqa: F401 - a fixture

from metaopt.cli import main
from metaopt.training import TrainingHooks, load_run, resume, train
from metaopt.training.build import build_algorithm
from metaopt.training.checkpoint import load_checkpoint
from metaopt.training.config import resolve_config
from metaopt.training.family import ConfigError, TaskFamily, TrainConfig
from metaopt.training.registry import register_family
from metaopt.training.state import algorithm_state
from supervised.omniglot.family import OmniglotFamily


@register_family
class PickyFamily(RToyFamily):
    """rtoy whose runs select on ``val_score`` (supplied by a `Script` hook), larger better."""

    name = "picky"
    higher_is_better = True

    def selection_metric(self, config: TrainConfig) -> str | None:
        return "val_score"


@register_family
class PickyLowFamily(PickyFamily):
    """`PickyFamily` where a smaller score is better (a loss)."""

    name = "picky-low"
    higher_is_better = False


class Script(TrainingHooks):
    """Returns ``scores[iteration]`` as ``val_score`` at each validation (negated for a family
    where smaller is better), and keeps the parameters it was given then."""

    def __init__(self, scores: Mapping[int, float], sign: float = 1.0) -> None:
        self.scores, self.sign = scores, sign
        self.params: dict[int, dict[str, Any]] = {}

    def on_evaluation(self, iteration: int, algo: Any, config: TrainConfig) -> dict[str, float]:
        self.params[iteration] = copy.deepcopy(algorithm_state(algo))
        return {"val_score": self.sign * self.scores.get(iteration, 0.0)}


#: Validated every 2 iterations of 12: iteration 4 wins; 8 ties it (the earlier one stays), 10
#: is NaN (never selects).
SCORES = {2: 0.3, 4: 0.9, 6: 0.5, 8: 0.9, 10: math.nan, 12: 0.7}


def _run(family: TaskFamily, out: Path, hooks: list[TrainingHooks], **flags: Any) -> Path:
    config = resolve_config(family, {"eval_every": 2, "out": str(out), **flags})
    return train(family, config, progress=False, hooks=hooks)


def _rows(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("family", [PickyFamily(), PickyLowFamily()], ids=["higher", "lower"])
def test_best_pt_holds_the_parameters_of_the_best_validation(
    family: TaskFamily, tmp_path: Path
) -> None:
    sign = 1.0 if family.higher_is_better else -1.0
    script = Script(SCORES, sign)
    run_dir = _run(family, tmp_path / "run", [script])
    best = load_checkpoint(run_dir / "best.pt")
    assert best["iteration"] == 4
    assert best["selection"] == {"iteration": 4, "metric": "val_score", "value": sign * 0.9}
    assert_bitwise_equal(best["algorithm"], script.params[4], "best.pt")
    # The rows say which iteration is the best so far, at each validation.
    validated = [row for row in _rows(run_dir) if "val_score" in row]
    assert [row["best_iteration"] for row in validated] == [2, 4, 4, 4, 4, 4]
    assert validated[-1]["best_val_score"] == sign * 0.9
    # The final evaluation is best.pt's, and says so.
    evaluation = json.loads((run_dir / "eval.json").read_text())
    assert evaluation["selected"] == {
        "checkpoint": "best.pt",
        "iteration": 4,
        "val_mse": sign * 0.9,
        "selected_by": "val_score",
    }
    _, config, selected = load_run(run_dir, "best.pt")
    _, _, last = load_run(run_dir)
    assert evaluation["by_steps"] == evaluate_on_linear_tasks(selected, config)["by_steps"]
    assert evaluation["by_steps"] != evaluate_on_linear_tasks(last, config)["by_steps"]


def test_the_last_iteration_is_validated_when_eval_every_does_not_divide(tmp_path: Path) -> None:
    script = Script({4: 0.1, 8: 0.2, 11: 0.3})
    run_dir = _run(PickyFamily(), tmp_path / "run", [script], eval_every=4, iterations=11)
    assert sorted(script.params) == [4, 8, 11]
    assert load_checkpoint(run_dir / "best.pt")["iteration"] == 11
    # --eval-every 0: the last iteration alone, so a run always has its best.pt.
    script = Script({5: 0.5})
    run_dir = _run(PickyFamily(), tmp_path / "once", [script], eval_every=0, iterations=5)
    assert sorted(script.params) == [5]
    assert json.loads((run_dir / "eval.json").read_text())["selected"]["iteration"] == 5


def test_a_resumed_run_keeps_the_best_it_found_before(tmp_path: Path) -> None:
    """Best at 4; a run stopped at 6 and resumed to 12 must still end with 4 (a resume that
    forgot it would pick 6, 8 or 12), bit for bit the uninterrupted run's best.pt."""
    whole = _run(PickyFamily(), tmp_path / "whole", [Script(SCORES)])
    part = _run(PickyFamily(), tmp_path / "part", [Script(SCORES)], iterations=6)
    assert load_checkpoint(part / "best.pt")["iteration"] == 4
    resume(part, overrides={"iterations": 12}, progress=False, hooks=[Script(SCORES)])
    ours, theirs = load_checkpoint(part / "best.pt"), load_checkpoint(whole / "best.pt")
    assert ours["iteration"] == theirs["iteration"] == 4
    assert_bitwise_equal(ours["algorithm"], theirs["algorithm"], "best.pt")
    assert [r.get("best_iteration") for r in _rows(part)] == [
        r.get("best_iteration") for r in _rows(whole)
    ]


def test_resuming_from_an_older_checkpoint_replaces_a_later_best(tmp_path: Path) -> None:
    """The best at 10 was found after checkpoint.prev.pt (iteration 6); continuing from that
    checkpoint cuts the rows after 6 and must take best.pt back to the checkpoint's best (4)
    until the continued run finds a better one (here none)."""
    scores = {2: 0.3, 4: 0.9, 6: 0.5, 8: 0.1, 10: 0.95, 12: 0.2}
    first = Script(scores)
    run_dir = _run(PickyFamily(), tmp_path / "run", [first], checkpoint_every=6)
    assert load_checkpoint(run_dir / "best.pt")["iteration"] == 10
    again = Script({**scores, 10: 0.1})
    resume(run_dir, checkpoint="checkpoint.prev.pt", progress=False, hooks=[again])
    assert sorted(again.params) == [8, 10, 12]
    best = load_checkpoint(run_dir / "best.pt")
    assert best["iteration"] == 4
    assert_bitwise_equal(best["algorithm"], first.params[4], "best.pt")
    assert json.loads((run_dir / "eval.json").read_text())["selected"]["iteration"] == 4


def test_eval_uses_best_pt_by_default_and_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir = _run(PickyFamily(), tmp_path / "run", [Script(SCORES)])
    own = (run_dir / "eval.json").read_text()
    assert main(["eval", str(run_dir)]) == 0
    err = capsys.readouterr().err
    assert "evaluating best.pt (iteration 4, val_mse 0.9000)" in err
    assert (run_dir / "eval.json").read_text() == own  # the same evaluation as the run's own
    # --checkpoint last: the last parameters, in files of their own; eval.json stays.
    assert main(["eval", str(run_dir), "--checkpoint", "last"]) == 0
    out = capsys.readouterr()
    assert "evaluating checkpoint.pt (iteration 12, the last)" in out.err
    assert f"evaluation: {run_dir / 'eval-last.json'}" in out.out
    last = json.loads((run_dir / "eval-last.json").read_text())
    assert last["selected"] == {"checkpoint": "checkpoint.pt", "iteration": 12}
    _, config, algo = load_run(run_dir)
    assert last["by_steps"] == evaluate_on_linear_tasks(algo, config)["by_steps"]
    assert (run_dir / "eval.json").read_text() == own
    assert main(["eval", str(run_dir), "--checkpoint", "last", "--tasks", "3"]) == 0
    assert (run_dir / "eval-last-3-0,1.json").is_file()


def test_runs_of_families_without_validation_are_as_before(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    family = RToyFamily()
    config = resolve_config(family, {"eval_every": 2, "out": str(tmp_path / "run")})
    run_dir = train(family, config, progress=False)
    assert not (run_dir / "best.pt").exists()
    assert "selected" not in json.loads((run_dir / "eval.json").read_text())
    assert not any("best_iteration" in row for row in _rows(run_dir))
    assert load_checkpoint(run_dir / "checkpoint.pt")["best"] is None
    before = sorted(p.name for p in run_dir.iterdir())
    assert main(["eval", str(run_dir), "--checkpoint", "best"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        f"metaopt: error: --checkpoint best: {run_dir} has no best.pt (family rtoy holds out no "
        "validation tasks, so its runs keep none)"
    )
    assert sorted(p.name for p in run_dir.iterdir()) == before
    assert main(["eval", str(run_dir), "--checkpoint", "last"]) == 0
    assert sorted(p.name for p in run_dir.iterdir()) == before  # eval.json rewritten, no tag


def test_best_pt_cannot_be_resumed_from(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run_dir = _run(PickyFamily(), tmp_path / "run", [Script(SCORES)])
    stamp = (run_dir / "metrics.jsonl").read_bytes()
    argv = ["train", "picky", "--resume", str(run_dir), "--checkpoint", "best.pt"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot resume from" in err and "best.pt" in err
    assert (run_dir / "metrics.jsonl").read_bytes() == stamp


def test_val_episodes_is_checked_and_sets_the_validation_size(omniglot_dir: Path) -> None:
    family = OmniglotFamily()
    data = {"data_dir": str(omniglot_dir), **FIXTURE_SPLIT}
    with pytest.raises(ConfigError, match=r"^--val-episodes must be an integer >= 1, got 0$"):
        resolve_config(family, {**data, "val_episodes": 0})
    config = resolve_config(family, {**data, "val_episodes": 7, "filters": 4})
    assert family.selection_metric(config) == "val_accuracy_after"
    drawn: list[tuple[str, int]] = []
    sample = family.sample_batch

    def spy(config: Any, rng: Any, num_tasks: int, *, split: str = "train") -> Any:
        drawn.append((split, num_tasks))
        return sample(config, rng, num_tasks, split=split)

    family.sample_batch = spy  # type: ignore[method-assign]
    scores = family.periodic_eval(build_algorithm(config, family.make_model(config)), config)
    assert drawn == [("val", 7)] and set(scores) == {"val_accuracy_before", "val_accuracy_after"}
    no_val = resolve_config(family, {**data, "val_classes": 0})
    assert family.selection_metric(no_val) is None


def test_omniglot_selects_best_pt_on_its_validation_classes(
    omniglot_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["train", "omniglot", "--data-dir", str(omniglot_dir), "--iterations", "4"]
    argv += ["--eval-every", "2", "--val-episodes", "10", "--eval-tasks", "10", "--quiet"]
    argv += ["--meta-batch", "2", "--filters", "8", "--baseline-steps", "2"]
    argv += [f"--{k.replace('_', '-')}={v}" for k, v in FIXTURE_SPLIT.items()]
    assert main([*argv, "--out", str(tmp_path / "run")]) == 0
    run_dir = tmp_path / "run"
    summary = capsys.readouterr().out  # the console summary names the parameters tested
    assert "over 10 held-out tasks, with best.pt (iteration " in summary
    validated = [row for row in _rows(run_dir) if "val_accuracy_after" in row]
    assert [row["iteration"] for row in validated] == [2, 4]
    scores = [row["val_accuracy_after"] for row in validated]
    winner = validated[scores.index(max(scores))]  # the first of equal scores
    evaluation = json.loads((run_dir / "eval.json").read_text())
    assert evaluation["selected"] == {
        "checkpoint": "best.pt",
        "iteration": winner["iteration"],
        "val_accuracy": winner["val_accuracy_after"],
        "selected_by": "val_accuracy_after",
    }
    assert evaluation["tasks"] == 10 and set(evaluation["by_steps"]["1"]) >= {"mean", "ci95"}
    capsys.readouterr()
    assert main(["eval", str(run_dir), "--tasks", "4", "--steps", "0,1"]) == 0
    out = capsys.readouterr()
    assert f"evaluating best.pt (iteration {winner['iteration']}" in out.err
    assert (
        json.loads((run_dir / "eval-4-0,1.json").read_text())["selected"] == evaluation["selected"]
    )
    state = load_checkpoint(run_dir / "best.pt")
    assert torch.is_tensor(next(iter(state["algorithm"]["model"].values())))


def test_a_run_whose_scores_are_never_finite_tests_its_last_parameters_and_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """No hook supplies ``val_score``: nothing is ever selected, so no best.pt, and the final
    test names the last checkpoint."""
    run_dir = tmp_path / "run"
    assert main(["train", "picky", "--eval-every", "2", "--out", str(run_dir)]) == 0
    err = capsys.readouterr().err
    assert "metaopt: picky/maml: evaluating checkpoint.pt (iteration 12, the last)" in err
    assert not (run_dir / "best.pt").exists()
    evaluation = json.loads((run_dir / "eval.json").read_text())
    assert evaluation["selected"] == {"checkpoint": "checkpoint.pt", "iteration": 12}
