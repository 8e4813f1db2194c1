"""``metaopt scale FAMILY``: its flags (from `ScaleOptions`) and the command."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from metaopt.tools.scale.options import ScaleFailure, ScaleOptions
from metaopt.training import TaskFamily
from metaopt.training.config import (
    add_dataclass_arguments,
    dataclass_arguments,
    dataclass_from_arguments,
)

__all__ = ["add_scale_arguments", "run_scale_command"]

#: The prefix of the argparse destinations of `ScaleOptions`' flags (``scale_threads``),
#: which keeps them apart from the config fields of the same name (``threads``).
_PREFIX = "scale_"
#: The destinations of the flags that say where the results go.
_OUTPUTS = ("scale_json", "scale_keep")


def add_scale_arguments(parser: argparse.ArgumentParser) -> None:
    """``metaopt scale FAMILY``'s own flags; the family's config flags are added separately.

    The parser needs ``conflict_handler="resolve"``: ``--threads`` replaces the config's flag (it
    sets the runs' ``--threads`` and ``OMP_NUM_THREADS``), and ``--out`` is hidden.
    """
    add_dataclass_arguments(parser, ScaleOptions, prefix=_PREFIX)
    parser.add_argument(
        "--json",
        dest="scale_json",
        type=Path,
        default=None,
        metavar="PATH",
        help="write every run's times, the summary and the setting as JSON",
    )
    parser.add_argument(
        "--keep",
        dest="scale_keep",
        type=Path,
        default=None,
        metavar="DIR",
        help="keep the runs' directories in DIR, new or empty (default: a temporary directory)",
    )
    # Each run writes its own directory: --out would be ambiguous. Hidden, and refused if given.
    parser.add_argument("--out", dest="out", default=argparse.SUPPRESS, help=argparse.SUPPRESS)


def run_scale_command(family: TaskFamily, arguments: Mapping[str, Any]) -> int:
    """``metaopt scale``: options from the parsed arguments, run, and the exit status.

    Returns 0, or 1 (with the reason on stderr) when a run failed or the runs disagree.

    Raises:
        ConfigError: an out-of-range flag (exit status 2), before anything is launched.
    """
    from metaopt.tools.scale.run import run_scale  # imports torch: not while parsing
    from metaopt.training.progress import progress_to_stderr

    options = dataclass_from_arguments(ScaleOptions, arguments, prefix=_PREFIX)
    own = (*dataclass_arguments(ScaleOptions, prefix=_PREFIX), *_OUTPUTS, "command", "family")
    overrides = {k: v for k, v in arguments.items() if k not in own}
    if "iterations" in overrides:  # every run trains: metaopt train's one bound, before launching
        from metaopt.training.loop import check_iterations_to_train

        check_iterations_to_train(overrides["iterations"])
    try:
        with progress_to_stderr():
            run_scale(
                family,
                overrides,
                options,
                json_path=arguments["scale_json"],
                keep=arguments["scale_keep"],
            )
    except ScaleFailure as error:
        print(f"metaopt: error: {error}", file=sys.stderr)
        return 1
    return 0
