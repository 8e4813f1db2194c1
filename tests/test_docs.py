"""Every ```python block in README.md and docs/*.md runs, so the docs cannot rot.

Blocks of one file run in order in one namespace, in a temporary directory. A block whose first
line is ``# not run`` is skipped (for commands that need data the tests do not have).
"""

from __future__ import annotations

import os
import re
import sys
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md")])
BLOCK = re.compile(r"^```python\n(.*?)^```", re.MULTILINE | re.DOTALL)


def python_blocks(path: Path) -> list[str]:
    return [b for b in BLOCK.findall(path.read_text()) if not b.startswith("# not run")]


@pytest.mark.parametrize("path", [p for p in DOCS if python_blocks(p)], ids=lambda p: p.name)
def test_code_blocks_run(path: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    # A real module, so that dataclasses and pickling defined in a block can find it.
    module = types.ModuleType(f"docs_{path.stem}")
    monkeypatch.setitem(sys.modules, module.__name__, module)
    for number, block in enumerate(python_blocks(path), start=1):
        try:
            exec(compile(block, f"{path.name} block {number}", "exec"), module.__dict__)
        except Exception as error:
            raise AssertionError(f"{path.name}, code block {number} failed: {error!r}") from error
    assert os.getcwd() == str(tmp_path)
