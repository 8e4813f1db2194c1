"""Every command of the README's command list parses with the real ``metaopt`` parser, so the list
cannot name a flag or a value that the command line refuses."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from metaopt.cli import _load_families, build_parser

README = Path(__file__).parent.parent / "README.md"


def readme_commands() -> list[str]:
    text = README.read_text()
    section = text.split("## On the command line", 1)[1]
    block = re.search(r"```console\n(.*?)```", section, re.S)
    assert block is not None
    commands = []
    for line in block[1].splitlines():
        command = line.split("#", 1)[0].strip()
        if command:
            commands.append(command)
    return commands


def test_the_list_is_found() -> None:
    commands = readme_commands()
    assert len(commands) >= 10 and all("metaopt" in c for c in commands)


@pytest.mark.parametrize("command", readme_commands())
def test_each_command_parses(command: str, tmp_path: Path) -> None:
    words = shlex.split(command.replace("RUN_DIR", str(tmp_path)))
    words = [w for w in words if "=" not in w or w.startswith("-")]  # VAR=value prefixes
    if words[0] == "torchrun":  # torchrun [its flags] -m metaopt ARGS
        words = words[words.index("metaopt") :]
    assert words[0] == "metaopt", command
    if "--help" in words:
        with pytest.raises(SystemExit) as exit_info:
            build_parser(_load_families()[0]).parse_args(words[1:])
        assert exit_info.value.code == 0
        return
    parsed, unknown = build_parser(_load_families()[0]).parse_known_args(words[1:])
    assert unknown == [], command
    assert parsed.command == words[1]
