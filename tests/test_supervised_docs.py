"""The command lines of docs/supervised.md run (its python blocks run in tests/test_docs.py).

Each line of a ```bash block is a ``metaopt ...`` or ``python -m supervised.omniglot ...`` command;
they run in order, in process through the same ``main`` functions the console scripts call, in one
temporary directory. A block whose first line is ``# not run`` is skipped (real data, long runs).
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from metaopt import cli
from supervised.omniglot import data as omniglot

DOC = Path(__file__).resolve().parents[1] / "docs" / "supervised.md"
BLOCK = re.compile(r"^```bash\n(.*?)^```", re.MULTILINE | re.DOTALL)


def commands() -> list[list[str]]:
    found = []
    for block in BLOCK.findall(DOC.read_text()):
        if block.startswith("# not run"):
            continue
        found += [
            shlex.split(line) for line in block.splitlines() if line and not line.startswith("#")
        ]
    return found


def test_the_page_has_commands_to_run() -> None:
    programs = {" ".join(c[:2]) if c[0] == "metaopt" else " ".join(c[:3]) for c in commands()}
    assert programs == {"metaopt train", "metaopt eval", "python -m supervised.omniglot"}


def test_command_lines_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    for command in commands():
        if command[0] == "metaopt":
            status = cli.main(command[1:])
        elif command[:3] == ["python", "-m", "supervised.omniglot"]:
            status = omniglot.main(command[3:])
        else:
            raise AssertionError(f"docs/supervised.md: no runner for {shlex.join(command)}")
        assert status == 0, shlex.join(command)
    assert (tmp_path / "runs" / "omniglot-demo" / "eval.json").is_file()
