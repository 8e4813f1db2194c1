"""The command line a newcomer meets first (issue 17): fast, and its help and errors say what is true."""

from __future__ import annotations

import subprocess
import sys

import pytest

from metaopt.cli import main

HEAVY = ("torch", "matplotlib", "gymnasium")

_PROBE = """
import sys
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
    ],
)
def test_parsing_imports_no_heavy_module(argv: list[str]) -> None:
    """Help, version and argument errors answer before torch, matplotlib or gymnasium load."""
    probe = _PROBE.format(argv=argv, heavy=HEAVY)
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "IMPORTED:"


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    import metaopt

    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0
    assert capsys.readouterr().out.strip() == f"metaopt {metaopt.__version__}"


def test_unknown_flag_shows_the_subcommand_usage_and_a_suggestion(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as stop:
        main(["train", "sine", "--iters", "50"])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert "usage: metaopt train sine" in err
    assert "unrecognized arguments: --iters 50 (did you mean --iterations?)" in err


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
