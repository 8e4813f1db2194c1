"""Configuration by algorithm: the run's fields beside the chosen algorithm's options, nested
under its name in ``config.json``; another algorithm's flag refused by name; runs saved flat (by
metaopt 0.1.0) read nested."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from reliability_helpers import RToyFamily

from metaopt.cli import main
from metaopt.training import ConfigError
from metaopt.training.config import load_config, resolve_config

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
    assert (
        "iMAML options (--algo imaml):" in shown and "Meta-SGD options (--algo metasgd):" in shown
    )
    assert "options of --algo maml, fomaml, metasgd:" in shown
    assert "(default: 10; algo imaml: 30)" in " ".join(shown.split())  # --cg-steps
