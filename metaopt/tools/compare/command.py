"""``metaopt compare FAMILY``: its flags (from `CompareOptions`) and the command."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from metaopt.tools.compare.options import CompareOptions
from metaopt.training import ConfigError, TaskFamily
from metaopt.training.config import (
    add_dataclass_arguments,
    dataclass_arguments,
    dataclass_from_arguments,
    resolve_config,
)

__all__ = ["add_compare_arguments", "run_compare_command"]


# -- the command ---------------------------------------------------------------------------------

#: The command's flags that are neither config fields nor `CompareOptions` fields.
_COMMAND = ("report", "threads", "quiet")


def add_compare_arguments(parser: argparse.ArgumentParser) -> None:
    """``metaopt compare FAMILY``'s own flags (the family's config flags are added separately):
    ``--report``, one flag per `CompareOptions` field, ``--threads`` and ``--quiet``."""
    parser.add_argument(
        "--report",
        default=None,
        metavar="DIR",
        help="report directory, new or empty (default: reports/compare-<family>-<time>)",
    )
    add_dataclass_arguments(parser, CompareOptions)
    # compare runs every method into --report: the config's --algo and --out do not apply, so
    # they are hidden (and refused with a pointer to --methods and --report if given).
    for flag, dest in (("--algo", "algo"), ("--out", "out")):
        parser.add_argument(flag, dest=dest, default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        metavar="N",
        help="torch threads for the whole comparison (default: torch's); stated in the report",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars or lines")


def run_compare_command(family: TaskFamily, arguments: Mapping[str, Any]) -> int:
    """``metaopt compare``: resolve the config, compare, print the report; the exit status.

    Raises:
        ConfigError: for ``--algo`` or ``--out`` (compare runs every method into the report)
            and for any out-of-range value.
    """
    import torch  # here, not above: the command line builds its parser without torch

    from metaopt.tools.compare.run import compare_methods
    from metaopt.training.progress import progress_to_stderr

    for name, option, instead in (("algo", "--algo", "--methods"), ("out", "--out", "--report")):
        if name in arguments:
            raise ConfigError(f"{option} does not apply to metaopt compare; use {instead}")
    own = (*_COMMAND, *dataclass_arguments(CompareOptions), "command", "family")
    options = dataclass_from_arguments(CompareOptions, arguments)
    options.validate()
    overrides = {k: v for k, v in arguments.items() if k not in own}
    config = resolve_config(family, overrides, methods=options.all_methods)
    if arguments["threads"] is not None:
        if arguments["threads"] < 1:
            raise ConfigError(f"--threads must be an integer >= 1, got {arguments['threads']}")
        torch.set_num_threads(arguments["threads"])
    with progress_to_stderr(quiet=arguments["quiet"]):
        results = compare_methods(
            family,
            config,
            arguments["report"],
            options,
            progress=False if arguments["quiet"] else None,
        )
    report = Path(results["report_dir"])
    print((report / "report.md").read_text())
    print(f"report directory: {report}")
    return 0
