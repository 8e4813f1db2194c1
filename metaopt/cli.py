"""The ``metaopt`` command.

    metaopt train FAMILY [--algo maml|fomaml|metasgd|reptile] [flags]   meta-train, then evaluate
    metaopt eval RUN_DIR [--tasks N] [--steps 0,1,5]                  re-run a run's evaluation
    metaopt families                                                 list the task families

User errors print one line and exit with status 2; only real bugs show a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from metaopt.config import add_config_arguments, resolve_config
from metaopt.family import ConfigError, TaskFamily
from metaopt.registry import available_families, get_family

__all__ = ["main"]


def _steps(text: str) -> list[int]:
    try:
        steps = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from None
    if not steps or min(steps) < 0:
        raise argparse.ArgumentTypeError(f"expected integers >= 0, got {text!r}")
    return steps


def _load_families() -> tuple[dict[str, TaskFamily], dict[str, str]]:
    loaded, broken = {}, {}
    for name in available_families():
        try:
            loaded[name] = get_family(name)
        except Exception as error:  # a broken plug-in must not take the command down
            broken[name] = f"{type(error).__name__}: {error}"
    return loaded, broken


def build_parser(families: dict[str, TaskFamily]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="metaopt",
        description="Meta-learning with MAML, first-order MAML, Meta-SGD and Reptile on TorchOpt.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = commands.add_parser(
        "train",
        help="meta-train on a task family, then evaluate on held-out tasks",
        description="Meta-train on a task family, then evaluate on held-out tasks. "
        "Leaves config.json, metrics.jsonl, checkpoint.pt, eval.json and plots in --out.",
    )
    per_family = train.add_subparsers(dest="family", required=True, metavar="FAMILY")
    for name, family in families.items():
        sub = per_family.add_parser(name, help=family.description, description=family.description)
        add_config_arguments(sub, family)
        sub.add_argument("--quiet", action="store_true", help="no progress bar")

    evaluate = commands.add_parser(
        "eval",
        help="re-run the evaluation of a saved run (rewrites its eval.json)",
        description="Re-run the held-out evaluation of a saved run directory and rewrite eval.json.",
    )
    evaluate.add_argument("run_dir", metavar="RUN_DIR", help="directory written by metaopt train")
    evaluate.add_argument(
        "--tasks", type=int, default=None, help="held-out tasks (default: the run's)"
    )
    evaluate.add_argument(
        "--steps",
        type=_steps,
        default=None,
        help="adaptation steps, e.g. 0,1,5,10 (default: the family's)",
    )

    commands.add_parser("families", help="list the installed task families")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``metaopt`` console script; returns the exit status."""
    families, broken = _load_families()
    parser = build_parser(families)
    args = parser.parse_args(argv)
    try:
        if args.command == "families":
            for name, family in families.items():
                print(f"{name:10s} {family.description}")
            for name, why in broken.items():
                print(f"{name:10s} (failed to load: {why})")
            return 0
        if args.command == "train":
            from metaopt.runner import summarize, train

            family = families[args.family]
            overrides = {
                key: value
                for key, value in vars(args).items()
                if key not in ("command", "family", "quiet")
            }
            config = resolve_config(family, overrides)
            run_dir = train(family, config, progress=False if args.quiet else None)
            print(summarize(json.loads((run_dir / "eval.json").read_text())))
            print(f"run directory: {run_dir}")
            return 0
        if args.command == "eval":
            from metaopt.runner import evaluate_run, summarize

            print(summarize(evaluate_run(args.run_dir, num_tasks=args.tasks, steps=args.steps)))
            return 0
    except ConfigError as error:
        print(f"metaopt: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("metaopt: interrupted", file=sys.stderr)
        return 130
    parser.error(f"unknown command {args.command!r}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
