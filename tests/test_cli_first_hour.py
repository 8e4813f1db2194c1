"""The command line a newcomer meets first (issue 17): fast, and its help and errors say what is true."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from metaopt.cli import main

HEAVY = ("torch", "matplotlib", "gymnasium")

_PROBE = """
import sys
from pathlib import Path
from metaopt.cli import main
try:
    main({argv!r})
except SystemExit:
    pass
print("IMPORTED:" + ",".join(m for m in {heavy!r} if m in sys.modules))
"""


@pytest.mark.parametrize(
    "argv",
    [
        ["--help"],
        ["--version"],
        ["train", "--help"],
        ["train", "sine", "--help"],
        ["train", "sine", "--iters", "5"],
        ["train", "sine", "--shots", "ten"],
        ["compare", "sine", "--help"],
        ["scale", "classify", "--help"],
        ["eval", "--help"],
        ["nonsense"],
        # issue 27: every family's help, the tools' and the family list, without torch
        ["families"],
        ["train", "mdp", "--help"],
        ["train", "nav2d", "--help"],
        ["train", "cheetah-vel", "--help"],
        ["train", "omniglot", "--help"],
        ["train", "classify", "--help"],
        ["compare", "--help"],
        ["compare", "mdp", "--help"],
        ["compare", "nav2d", "--help"],
        ["compare", "omniglot", "--help"],
        ["scale", "--help"],
        ["scale", "mdp", "--help"],
        ["scale", "nav2d", "--help"],
        ["bench", "--help"],
        ["train", "mdp", "--hidden-sizes", "x"],
    ],
)
def test_parsing_imports_no_heavy_module(argv: list[str]) -> None:
    """Help, version and argument errors answer before torch, matplotlib or gymnasium load."""
    probe = _PROBE.format(argv=argv, heavy=HEAVY)
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "IMPORTED:"


def test_the_light_configs_name_the_choices_the_torch_modules_implement() -> None:
    """rl.config holds the choices without torch; the modules that implement them agree."""
    from rl import config, continuous, estimators, policy

    assert tuple(policy.ACTIVATIONS) == config.ACTIVATION_NAMES
    assert estimators.ESTIMATORS is config.ESTIMATORS
    assert continuous.BASELINES is config.BASELINES


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    import metaopt

    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0
    assert capsys.readouterr().out.strip() == f"metaopt {metaopt.__version__}"


def test_unknown_flag_names_the_closest_flag_and_the_subcommand_help(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as stop:
        main(["train", "sine", "--iters", "50"])
    assert stop.value.code == 2
    assert capsys.readouterr().err == (
        "metaopt: error: unrecognized arguments: --iters 50 (did you mean --iterations?) "
        "(see metaopt train sine --help)\n"
    )


def _help(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit):
        main([*argv, "--help"])
    return " ".join(capsys.readouterr().out.split())  # argparse wraps lines


def test_help_shows_each_default_once_as_typed(capsys: pytest.CaptureFixture[str]) -> None:
    sine = _help(["train", "sine"], capsys)
    assert "run directory (default: runs/<family>-<algo>-<time>) --threads" in sine
    assert "default: none" not in sine
    assert "no progress bar (default: off)" in sine
    mdp = _help(["train", "mdp"], capsys)
    assert "(presets: seed, tabular, tabular10, tuned)" in mdp
    assert "(default: 32,32;" in mdp and "(32, 32)" not in mdp


def test_compare_help_lists_no_flag_it_refuses(capsys: pytest.CaptureFixture[str]) -> None:
    text = _help(["compare", "sine"], capsys)
    assert "--out " not in text and "--algo " not in text
    assert main(["compare", "sine", "--out", "x"]) == 2
    assert "--out does not apply to metaopt compare" in capsys.readouterr().err


def test_resume_warns_of_no_thread_difference_the_config_removes(tmp_path: Path) -> None:
    """The checkpoint's thread count is compared with the one the resumed run trains with
    (``--threads``, applied after the checks), not with the process's count before it."""
    import warnings

    import reliability_helpers as rh
    import torch

    from metaopt.training import ResumeWarning, resume, train
    from metaopt.training.config import resolve_config

    family = rh.family("rtoy")
    config = resolve_config(family, {"iterations": 3, "threads": 1, "out": str(tmp_path / "r")})
    before = torch.get_num_threads()
    try:
        run_dir = train(family, config, progress=False)
        torch.set_num_threads(2)  # a fresh process has torch's default, not --threads
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            resume(run_dir, family=family, overrides={"iterations": 4}, progress=False)
    finally:
        torch.set_num_threads(before)
    threads = [w for w in caught if issubclass(w.category, ResumeWarning) and "threads" in str(w)]
    assert threads == []


def test_train_refuses_zero_iterations(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "r"
    assert main(["train", "sine", "--iterations", "0", "--out", str(out), "--quiet"]) == 2
    assert "--iterations must be an integer >= 1 to train, got 0" in capsys.readouterr().err
    assert not out.exists()


def test_summary_reports_the_diverged_count_not_the_other_tasks_mean() -> None:
    import math

    from metaopt.stats import mean_ci95, task_summary
    from metaopt.training import evaluation_summary

    values = [1.0, 2.0, 4.0, math.inf, math.nan]
    mean, _ = mean_ci95(values[:3])
    evaluation = {"metric": "mse", "tasks": 5, "by_steps": {"5": task_summary(values)}}
    text = evaluation_summary(evaluation)
    assert "after  5 steps: diverged on 2 of 5 tasks" in text and f"{mean:.4f}" not in text
    rl = {
        "metric": "return",
        "tasks": 4,
        "by_steps": {"1": {"mean": math.nan, "diverged_tasks": 4}},
    }
    assert "diverged on 4 of 4 tasks" in evaluation_summary(rl)
