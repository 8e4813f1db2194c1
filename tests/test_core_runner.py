"""The domain-free loop, run directory and command on a toy family registered in-process."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from reliability_helpers import LinearToyConfig, evaluate_on_linear_tasks

import metaopt
from metaopt import testing as mt
from metaopt.cli import main
from metaopt.training import (
    NonFiniteError,
    TrainingHooks,
    evaluate_run,
    load_run,
    resume,
    train,
)
from metaopt.training import loop as training_loop
from metaopt.training.checkpoint import load_checkpoint
from metaopt.training.config import resolve_config
from metaopt.training.family import TaskFamily, TrainConfig, option
from metaopt.training.registry import register_family


@dataclass
class ToyConfig(LinearToyConfig):
    iterations: int = option(5)
    eval_tasks: int = option(20)
    poison: bool = option(False, "make the query loss NaN at iteration 2 (tests)")


@register_family
class ToyFamily(TaskFamily):
    name = "toy"
    description = "linear least-squares tasks (core tests)"
    config_class = ToyConfig
    presets = {"wide": {"dim": 6}}
    metric = "mse"

    def make_model(self, config: TrainConfig) -> torch.nn.Module:
        return mt.LinearModel(np.zeros(config.dim))

    def sample_tasks(self, config: TrainConfig, rng: np.random.Generator, num_tasks: int):
        tasks = mt.random_linear_tasks(num_tasks, config.dim, rng)
        for task in tasks:  # a shared optimum θ* = 1 plus a small per-task offset: learnable
            optimum = 1.0 + 0.1 * rng.normal(size=config.dim)
            task.b, task.d = task.A @ optimum, task.C @ optimum
        self.calls = getattr(self, "calls", 0) + 1
        if config.poison and self.calls == 2:
            tasks[1].d = tasks[1].d * np.nan
        return tasks

    def evaluate(self, algo, config, run_dir, request):
        return evaluate_on_linear_tasks(algo, config, request.num_tasks, request.steps)


def test_train_writes_a_complete_run_dir(tmp_path: Path) -> None:
    family = ToyFamily()
    config = resolve_config(family, {"out": str(tmp_path / "run"), "algo": "metasgd"})
    run_dir = train(family, config, progress=False)
    names = {p.name for p in run_dir.iterdir()}
    assert {
        "config.json",
        "metrics.jsonl",
        "checkpoint.pt",
        "eval.json",
        "training_curve.png",
    } <= names
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows] == [1, 2, 3, 4, 5]
    saved = json.loads((run_dir / "config.json").read_text())
    assert saved["config"]["algo"] == "metasgd" and "torch" in saved["versions"]
    # The checkpoint restores the trained algorithm, learned rates included.
    _, _, algo = load_run(run_dir)
    assert isinstance(algo, metaopt.MetaSGD)
    assert not torch.equal(algo.inner_lrs[0], torch.full_like(algo.inner_lrs[0], 0.2))


def test_same_seed_same_metrics(tmp_path: Path) -> None:
    family = ToyFamily()
    for name in ("a", "b"):
        train(family, resolve_config(family, {"out": str(tmp_path / name)}), progress=False)
    first = (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()
    second = (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()
    assert _without_time(first) == _without_time(second)


def _without_time(lines: list[str]) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if k != "seconds"} for line in lines]


def test_meta_training_lowers_the_meta_loss(tmp_path: Path) -> None:
    family = ToyFamily()
    config = resolve_config(
        family, {"out": str(tmp_path / "r"), "iterations": 200, "outer_lr": 0.05}
    )
    run_dir = train(family, config, progress=False)
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert np.mean([r["query"] for r in rows[-50:]]) < 0.9 * np.mean(
        [r["query"] for r in rows[:10]]
    )


def test_refuses_to_overwrite_a_run(tmp_path: Path) -> None:
    family = ToyFamily()
    train(family, resolve_config(family, {"out": str(tmp_path)}), progress=False)
    with pytest.raises(metaopt.ConfigError, match="is not empty"):
        train(family, resolve_config(family, {"out": str(tmp_path)}), progress=False)


def test_non_finite_loss_stops_with_iteration_and_task(tmp_path: Path) -> None:
    family = ToyFamily()
    config = resolve_config(family, {"out": str(tmp_path), "poison": True})
    with pytest.raises(NonFiniteError, match="iteration 2: query loss of task 1 is nan"):
        train(family, config, progress=False)
    assert (tmp_path / "checkpoint.pt").is_file()  # the last good state was saved


def test_presets_then_flags(tmp_path: Path) -> None:
    family = ToyFamily()
    assert resolve_config(family, {"preset": "wide"}).dim == 6
    assert resolve_config(family, {"preset": "wide", "dim": 3}).dim == 3
    with pytest.raises(metaopt.ConfigError, match="--preset must be one of wide; got 'nope'"):
        resolve_config(family, {"preset": "nope"})


def test_cli_train_and_eval(tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    assert (
        main(
            ["train", "toy", "--algo", "fomaml", "--iterations", "3", "--out", str(out), "--quiet"]
        )
        == 0
    )
    assert "after  1 steps" in capsys.readouterr().out
    assert main(["eval", str(out), "--tasks", "7", "--steps", "0,2"]) == 0
    evaluation = json.loads((out / "eval-7-0,2.json").read_text())  # eval.json kept
    assert evaluation["tasks"] == 7 and set(evaluation["by_steps"]) == {"0", "2"}


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["train", "toy", "--algo", "sgd"],
            "--algo must be one of maml, fomaml, metasgd, reptile, imaml; got 'sgd'",
        ),
        (
            ["train", "toy", "--iterations", "-1"],
            "--iterations must be an integer >= 1 to train, got -1",
        ),
        (
            ["train", "toy", "--inner-lr", "0"],
            "--inner-lr must be a positive finite number, got 0.0",
        ),
        (["train", "toy", "--meta-batch", "0"], "--meta-batch must be an integer >= 1, got 0"),
        (["eval", "/nonexistent/run"], "RUN_DIR '/nonexistent/run' does not exist"),
    ],
)
def test_cli_user_errors_exit_2_without_traceback(argv, message, capsys) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_cli_unknown_family_and_bad_flag_type(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "nosuchfamily"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'nosuchfamily'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "toy", "--iterations", "many"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == (
        "metaopt: error: argument --iterations: expected an integer, got 'many' "
        "(see metaopt train toy --help)\n"
    )


def test_help_documents_every_flag_with_its_default(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["train", "toy", "--help"])
    text = capsys.readouterr().out
    for flag in (
        "--algo",
        "--inner-lr",
        "--meta-batch",
        "--iterations",
        "--outer-lr",
        "--seed",
        "--out",
        "--dim",
    ):
        assert flag in text
    assert "default: 0.2" in text and "preset wide: 6" in text


def test_option_without_help_keeps_the_overridden_fields_help() -> None:
    fields = {f.name: f for f in dataclasses.fields(ToyConfig)}
    base = {f.name: f for f in dataclasses.fields(TrainConfig)}
    assert fields["iterations"].default == 5 != base["iterations"].default
    assert fields["iterations"].metadata["help"] == base["iterations"].metadata["help"]
    with pytest.raises(TypeError, match=r"Typo\.iteratoins: option\(\) without help must override"):

        @dataclass
        class Typo(TrainConfig):
            iteratoins: int = option(5)


def test_evaluate_run_validates_options(tmp_path: Path) -> None:
    family = ToyFamily()
    train(family, resolve_config(family, {"out": str(tmp_path)}), progress=False)
    with pytest.raises(metaopt.ConfigError, match="--tasks must be an integer >= 1"):
        evaluate_run(tmp_path, num_tasks=0)


def test_eval_json_is_strict_json_when_adaptation_diverges(tmp_path: Path) -> None:
    class Diverging(ToyFamily):
        def evaluate(self, algo, config, run_dir, request):
            nan = {"mean": float("nan"), "ci95": float("inf")}
            return {"metric": "mse", "tasks": 1, "by_steps": {"0": nan}}

    run_dir = train(
        Diverging(), resolve_config(ToyFamily(), {"out": str(tmp_path)}), progress=False
    )

    def refuse(constant: str) -> None:
        raise ValueError(f"non-standard JSON constant {constant}")

    evaluation = json.loads((run_dir / "eval.json").read_text(), parse_constant=refuse)
    assert evaluation["by_steps"]["0"] == {"mean": None, "ci95": None}


def test_engine_and_threads_flags_take_effect(tmp_path: Path, monkeypatch) -> None:
    from metaopt.training import build_algorithm

    family = ToyFamily()
    for engine in ("loop", "vmap", "auto"):
        config = resolve_config(family, {"engine": engine})
        assert build_algorithm(config, family.make_model(config)).engine == engine
    seen = []
    monkeypatch.setattr(torch, "set_num_threads", seen.append)
    train(family, resolve_config(family, {"out": str(tmp_path), "threads": 3}), progress=False)
    assert seen == [3]
    seen.clear()
    train(
        family, resolve_config(family, {"out": str(tmp_path / "b"), "threads": 0}), progress=False
    )
    assert seen == []  # 0 keeps torch's own setting


def test_compile_flag_is_engine_compiled(capsys) -> None:
    from metaopt.cli import _load_families, build_parser

    parser = build_parser(_load_families()[0])
    assert vars(parser.parse_args(["train", "sine", "--compile"]))["engine"] == "compiled"
    assert "engine" not in vars(parser.parse_args(["train", "sine"]))  # the default stays auto
    assert vars(parser.parse_args(["train", "sine", "--engine", "vmap"]))["engine"] == "vmap"
    with pytest.raises(SystemExit):
        main(["train", "sine", "--help"])
    assert "--compile" in capsys.readouterr().out


def test_config_json_records_the_engine_used_and_the_batch_norm_mode(tmp_path: Path) -> None:
    family = ToyFamily()
    for engine, used in (("auto", "vmap"), ("loop", "loop")):
        run_dir = tmp_path / engine
        config = resolve_config(family, {"out": str(run_dir), "engine": engine})
        train(family, config, progress=False)
        saved = json.loads((run_dir / "config.json").read_text())
        assert saved["engine_used"] == used  # the toy batch is a BatchedTasks
        assert saved["config"]["batch_norm"] == "running"


def test_a_checkpoint_written_before_batch_norm_existed_still_resumes(tmp_path: Path) -> None:
    # tests/fixtures/sine-v0.1.0: a 3-iteration sine run written by metaopt 0.1.0 before the
    # batch_norm option (and engine_used) existed; its checkpoint's config lacks the field.
    import shutil

    run_dir = tmp_path / "old"
    shutil.copytree(Path(__file__).parent / "fixtures" / "sine-v0.1.0", run_dir)
    assert "batch_norm" not in json.loads((run_dir / "config.json").read_text())["config"]
    argv = ["train", "sine", "--resume", str(run_dir), "--iterations", "4", "--quiet"]
    assert main(argv) == 0
    saved = json.loads((run_dir / "config.json").read_text())
    assert saved["config"]["batch_norm"] == "running"
    assert saved["engine_used"] == "vmap"
    rows = (run_dir / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(r)["iteration"] for r in rows] == [1, 2, 3, 4]


def test_hooks_are_called_in_order_on_train_and_resume_and_kept_out_of_the_clock(
    tmp_path: Path, monkeypatch
) -> None:
    # The loop's clock reads a fake perf_counter that only the hooks advance (by 1000 s a call):
    # with the hooks kept out of the clock, every row's ``seconds`` is exactly 0.
    now = [0.0]
    monkeypatch.setattr(training_loop, "time", SimpleNamespace(perf_counter=lambda: now[0]))
    events: list[tuple] = []

    class Recorder(TrainingHooks):
        def __init__(self, name: str) -> None:
            self.name = name
            self.start_params: dict[int, dict[str, torch.Tensor]] = {}
            self.rows: list[dict] = []

        def on_iteration_start(self, iteration, algo):
            events.append((self.name, "start", iteration))
            state = algo.model.state_dict()
            self.start_params[iteration] = {k: v.clone() for k, v in state.items()}
            now[0] += 1000

        def on_evaluation(self, iteration, algo, config):
            events.append((self.name, "evaluation", iteration))
            now[0] += 1000
            return {f"{self.name}_at": iteration}

        def on_iteration_end(self, iteration, row):
            events.append((self.name, "end", iteration))
            self.rows.append(dict(row))
            now[0] += 1000

        def on_train_end(self, algo, config):
            events.append((self.name, "train_end"))
            now[0] += 1000

    def expected(iterations: range) -> list[tuple]:
        calls: list[tuple] = []
        for i in iterations:
            calls += [("a", "start", i), ("b", "start", i)]
            if i % 2 == 0:  # eval_every 2: after the family's periodic_eval
                calls += [("a", "evaluation", i), ("b", "evaluation", i)]
            calls += [("a", "end", i), ("b", "end", i)]
        return [*calls, ("a", "train_end"), ("b", "train_end")]

    a, b = Recorder("a"), Recorder("b")
    family = ToyFamily()
    config = resolve_config(family, {"out": str(tmp_path), "iterations": 3, "eval_every": 2})
    train(family, config, progress=False, hooks=(a, b))
    assert events == expected(range(1, 4))
    saved = load_checkpoint(tmp_path / "checkpoint.pt")
    assert saved["iteration"] == 3

    events.clear()
    resume(tmp_path, family=family, overrides={"iterations": 5}, progress=False, hooks=(a, b))
    assert events == expected(range(4, 6))
    # Iteration 4 starts from the parameters the checkpoint of iteration 3 holds.
    for name, value in saved["algorithm"]["model"].items():
        assert torch.equal(a.start_params[4][name], value), name

    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [row["iteration"] for row in rows] == [1, 2, 3, 4, 5]
    assert a.rows == b.rows == rows  # each hook sees the row as written
    assert [row.get("a_at") for row in rows] == [None, 2, None, 4, None]
    assert [row.get("b_at") for row in rows] == [None, 2, None, 4, None]
    assert [row["seconds"] for row in rows] == [0.0] * 5


def test_a_family_takes_its_description_config_and_presets_from_its_options() -> None:
    from metaopt.training.family import FamilyOptions

    options = FamilyOptions("toy tasks, declared once", ToyConfig, {"wide": {"dim": 6}})

    class Declared(TaskFamily, options=options):
        name = "declared"

    assert Declared.description == "toy tasks, declared once"
    assert Declared.config_class is ToyConfig and Declared.presets == {"wide": {"dim": 6}}
    assert ToyFamily.description == "linear least-squares tasks (core tests)"  # untouched
