"""Configuration by algorithm: the run's fields beside the chosen algorithm's options, nested
under its name in ``config.json``; another algorithm's flag refused by name; runs saved flat (by
metaopt 0.1.0) read nested; nav2d's trust-region CG steps under their own flag."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
from reliability_helpers import RToyFamily, assert_same_run, family

from metaopt.cli import main
from metaopt.training import ConfigError, resume, train
from metaopt.training.algorithm_config import RenamedOptionWarning
from metaopt.training.checkpoint import load_checkpoint, save_checkpoint
from metaopt.training.config import load_config, resolve_config
from metaopt.training.registry import get_family

#: The options metaopt 0.1.0 wrote at the top level of every config.json, at its defaults.
FLAT = {
    "positive_rates": False,
    "reg": 1.0,
    "cg_steps": 10,
    "cg_tol": 1e-3,
    "solver": "cg",
    "inner_tol": 0.0,
    "power_iterations": 0,
    "on_solve_failure": "stop",
    "curvature": "hessian",
    "unroll_checkpoints": None,
}


def test_config_json_nests_the_chosen_algorithms_options() -> None:
    config = resolve_config(RToyFamily(), {"algo": "imaml", "reg": 7.0, "curvature": "hessian"})
    # iMAML's own defaults under the flag given, every field recorded; nothing flat.
    assert config.to_dict()["algo_options"] == {
        "imaml": {
            "reg": 7.0,
            "cg_steps": 30,
            "cg_tol": 1e-3,
            "solver": "cg",
            "inner_tol": 1e-2,
            "power_iterations": 3,
            "inner_momentum": False,
            "on_solve_failure": "damp",
            "curvature": "hessian",
        }
    }
    assert not set(FLAT) & set(config.to_dict())
    assert config.options.reg == 7.0


def test_a_flat_config_json_is_read_nested(tmp_path: Path) -> None:
    rtoy = RToyFamily()
    saved = resolve_config(rtoy, {"algo": "metasgd"}).to_dict()
    del saved["algo_options"]
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"config": {**saved, **FLAT, "positive_rates": True}}))
    config = load_config(rtoy, path)
    # Meta-SGD's own (and MAML's unroll) kept, iMAML's dropped.
    assert config.algo_options == {"metasgd": {"unroll_checkpoints": None, "positive_rates": True}}


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--reg", "5"], "--reg applies to --algo imaml only; got --algo maml"),
        (["--cg-tol", "-1"], "--cg-tol must be a positive finite number, got -1.0"),  # range first
        (["--algo", "reptile", "--positive-rates"], "--positive-rates applies to --algo metasgd"),
        (["--algo", "imaml", "--unroll-checkpoints", "2"], "applies to the second-order unroll"),
    ],
)
def test_another_algorithms_flag_is_refused_by_name(flags: list[str], message: str, capsys) -> None:
    assert main(["train", "rtoy", *flags, "--quiet"]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err


def test_compare_takes_the_options_of_the_methods_it_compares() -> None:
    rtoy = RToyFamily()
    config = resolve_config(rtoy, {"reg": 5.0}, methods=("maml", "imaml"))
    assert config.algo == "maml" and config.algo_options["imaml"]["reg"] == 5.0
    with pytest.raises(ConfigError, match="--reg applies to --algo imaml only; got --methods maml"):
        resolve_config(rtoy, {"reg": 5.0}, methods=("maml", "fomaml"))


def test_help_shows_each_algorithms_options_under_its_heading(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["train", "rtoy", "--help"])
    shown = capsys.readouterr().out
    assert "iMAML options (algo imaml):" in shown and "Meta-SGD options (algo metasgd):" in shown
    assert "options of algo maml, fomaml, metasgd:" in shown
    assert "(default: 10; algo imaml: 30)" in " ".join(shown.split())  # --cg-steps


def test_nav2d_trust_region_cg_steps_have_their_own_flag(capsys) -> None:
    nav2d = get_family("nav2d")
    assert resolve_config(nav2d, {"trpo_cg_steps": 7}).trust_region_settings().cg_steps == 7
    with pytest.warns(RenamedOptionWarning, match="--cg-steps is the old name of --trpo-cg-steps"):
        assert resolve_config(nav2d, {"cg_steps": 7}).trpo_cg_steps == 7
    with pytest.raises(ConfigError, match="give only --trpo-cg-steps"):
        resolve_config(nav2d, {"cg_steps": 7, "trpo_cg_steps": 7})
    with pytest.raises(SystemExit):
        main(["train", "nav2d", "--help"])
    shown = " ".join(capsys.readouterr().out.split())
    assert "--trpo-cg-steps" in shown and "--cg-steps CG_STEPS deprecated" in shown


def test_an_old_nav2d_run_resumes(tmp_path: Path) -> None:
    """A nav2d run as metaopt 0.1.0 saved it (TRPO's CG steps as cg_steps, every algorithm's
    options flat) continues where it stopped, like a run that was never interrupted."""
    values = {"meta_batch": 3, "trajectories": 3, "horizon": 10, "hidden_sizes": (8,)}
    values |= {
        "eval_every": 0,
        "test_tasks": 2,
        "eval_tasks": 2,
        "trpo_cg_steps": 4,
        "anneal": False,
    }
    nav2d = family("nav2d")
    full = train(
        nav2d, resolve_config(nav2d, {**values, "iterations": 2, "out": str(tmp_path / "a")})
    )
    cut = train(
        nav2d, resolve_config(nav2d, {**values, "iterations": 1, "out": str(tmp_path / "b")})
    )

    def released(config: dict) -> dict:
        config = {k: v for k, v in config.items() if k != "algo_options"}
        return {**config, **FLAT, "cg_steps": config.pop("trpo_cg_steps")}

    saved = json.loads((cut / "config.json").read_text())
    (cut / "config.json").write_text(json.dumps({**saved, "config": released(saved["config"])}))
    state = load_checkpoint(cut / "checkpoint.pt")
    state["config"] = json.dumps(released(json.loads(state["config"])))
    save_checkpoint(cut / "checkpoint.pt", state)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RenamedOptionWarning)  # the saved name is no flag
        resume(cut, family=nav2d, overrides={"iterations": 2}, progress=False)
    assert_same_run(full, cut)
    assert json.loads((cut / "config.json").read_text())["config"]["trpo_cg_steps"] == 4
