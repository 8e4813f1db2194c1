"""The ``metaopt`` command.

    metaopt train FAMILY [--algo NAME] [flags]                        meta-train, then evaluate
    metaopt eval RUN_DIR [--tasks N] [--steps 0,1,5]                  re-run a run's evaluation
    metaopt compare FAMILY [flags] [--report DIR] [--steps 1,2,5,10]  second- vs first-order
    metaopt families                                                 list the task families
    metaopt bench [--quick] [--threads N] [--json PATH]               time the engines
    metaopt scale FAMILY [flags] [--processes 1,2] [--repeats 3]      time train at 1, 2... processes

User errors print one line and exit with status 2; only real bugs show a traceback.

Building the parser imports neither torch nor matplotlib nor a domain: a family's flags come from
its light ``metaopt.family_options`` entry point (`FamilyOptions`),
and only a family without one is imported, when its name is on the command line. So ``--help``,
``--version`` and argument errors answer at once; the heavy modules load once a command runs.
"""

from __future__ import annotations

import argparse
import difflib
import errno
import json
import os
import sys
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import NoReturn

import metaopt
from metaopt.options import reader
from metaopt.training.config import add_config_arguments
from metaopt.training.family import ConfigError, FamilyOptions, TaskFamily
from metaopt.training.registry import (
    available_families,
    family_options,
    get_family,
    missing_requirement,
)

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


#: ``--tasks``, ``--threads``, ``--repeats``: an integer >= 1; ``--min-sample-ms``: a number >= 0.
_positive_int = reader(int, low=1)
_non_negative_float = reader(float, low=0)


def _names(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


#: What the parser needs of a family: its description, config class and presets.
DescribedFamily = FamilyOptions | TaskFamily


@contextmanager
def _one_line_warnings() -> Iterator[None]:
    """Every warning a command raises as one ``metaopt: warning:`` line on stderr: the message,
    and the category where it is not metaopt's own (no file path, no source line). The one
    place the command shows warnings, for every subcommand."""

    def one_line(message, category, filename, lineno, file=None, line=None):  # type: ignore[no-untyped-def]
        own = category.__module__.split(".")[0] == "metaopt" or category is UserWarning
        text = " ".join(str(message).split())
        if not own:
            text += f" ({category.__name__})"
        try:
            print(f"metaopt: warning: {text}", file=sys.stderr if file is None else file)
        except OSError:  # no stderr to write to: as Python's own showwarning, say nothing
            pass

    with warnings.catch_warnings():  # restores Python's showwarning after the command
        warnings.showwarning = one_line
        yield


def _is_main_process() -> bool:
    """False on every rank but 0 under torchrun: the summary is printed once."""
    return os.environ.get("RANK", "0") == "0"


def _load_families() -> tuple[dict[str, DescribedFamily], dict[str, str]]:
    """Each family's description, from its light ``metaopt.family_options`` where it declares
    them (no torch), else from the family itself; and why a family failed to load."""
    loaded: dict[str, DescribedFamily] = {}
    broken = {}
    for name in available_families():
        try:
            options = family_options(name)
            loaded[name] = options if options is not None else get_family(name)
        except Exception as error:  # a broken plug-in must not take the command down
            broken[name] = f"{type(error).__name__}: {error}"
    return loaded, broken


def _described_families(argv: Sequence[str]) -> dict[str, DescribedFamily | None]:
    """Each family's options for the parser, read without importing the family where it declares
    them; a family that does not is imported only when ``argv`` names it (else ``None``)."""
    described: dict[str, DescribedFamily | None] = {}
    for name in available_families():
        try:
            options = family_options(name)
            described[name] = (
                options if options is not None else get_family(name) if name in argv else None
            )
        except Exception:  # a broken plug-in must not take the command down; `families` says why
            described[name] = None
    return described


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line and a pointer to ``--help`` (status 2), as
    every other refusal of the command; its subcommands' parsers are of this class too."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"metaopt: error: {message} (see {self.prog} --help)\n")


def build_parser(families: Mapping[str, DescribedFamily | None]) -> argparse.ArgumentParser:
    """The ``metaopt`` parser; ``families`` maps each name to its options (``None``: listed by
    name only, with no flags: the family is imported when it is named)."""
    parser = _Parser(
        prog="metaopt",
        description="Meta-learning with MAML, first-order MAML, Meta-SGD, Reptile, iMAML and the "
        "algorithms plug-ins add (the metaopt.algorithms entry points), on TorchOpt.",
    )
    parser.add_argument("--version", action="version", version=f"metaopt {metaopt.__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = commands.add_parser(
        "train",
        help="meta-train on a task family, then evaluate on held-out tasks",
        description="Meta-train on a task family, then evaluate on held-out tasks. "
        "Leaves config.json, metrics.jsonl, checkpoint.pt, eval.json and plots in --out.",
    )
    per_family = train.add_subparsers(dest="family", required=True, metavar="FAMILY")
    for name, family in families.items():
        if family is None:
            per_family.add_parser(name, help=_UNDESCRIBED)
            continue
        sub = per_family.add_parser(name, help=family.description, description=family.description)
        sub.set_defaults(subparser=sub)
        add_config_arguments(sub, family)
        sub.add_argument("--quiet", action="store_true", help="no progress bar (default: off)")
        sub.add_argument(
            "--tensorboard",
            action="store_true",
            help="also write TensorBoard event files into the run directory: the metrics.jsonl "
            "scalars, the evaluation and the plots; needs pip install 'metaopt[tensorboard]'; "
            "give it again with --resume (default: off)",
        )
        sub.add_argument(
            "--resume",
            metavar="RUN_DIR",
            default=None,
            help="continue the run in RUN_DIR from its latest checkpoint, bit for bit; its config "
            "comes from RUN_DIR/config.json (flags given with it must agree, except "
            + ", ".join("--" + n.replace("_", "-") for n in family.config_class.RESUMABLE)
            + "; see docs/reliability.md)",
        )
        sub.add_argument(
            "--checkpoint",
            metavar="FILE",
            dest="resume_checkpoint",
            default=None,
            help="with --resume: the checkpoint in RUN_DIR to continue from (default: "
            "checkpoint.pt; checkpoint.prev.pt is the one before it)",
        )

    evaluate = commands.add_parser(
        "eval",
        help="re-run the evaluation of a saved run (its eval.json and plots, or with --tasks or "
        "--steps new files beside them)",
        description="Re-run the held-out evaluation of a saved run directory and rewrite eval.json "
        "and its plots. With --tasks or --steps, evaluate those instead and write "
        "eval-<tasks>-<steps>.json (e.g. eval-1000-0,1,5.json) and plots named likewise "
        "(mse_vs_steps-1000-0,1,5.png), leaving the run's eval.json and plots as they were; the "
        "same flags again rewrite that file.",
    )
    evaluate.set_defaults(subparser=evaluate)
    evaluate.add_argument("run_dir", metavar="RUN_DIR", help="directory written by metaopt train")
    evaluate.add_argument(
        "--tasks", type=_positive_int, default=None, help="held-out tasks (default: the run's)"
    )
    steps_help = "adaptation steps, e.g. 0,1,5,10 (default: the family's)"
    evaluate.add_argument("--steps", type=_steps, default=None, help=steps_help)

    from metaopt.tools.compare import add_compare_arguments

    compare = commands.add_parser(
        "compare",
        help="second- vs first-order: meta-gradients, cost and learning curves of every algorithm",
        description="Compare the meta-gradients of MAML, first-order MAML, Meta-SGD and Reptile "
        "(or the algorithms --methods names) on the same tasks and initialisation (cosine and "
        "norm ratio against second-order MAML, per layer, against inner steps and over training), their time and memory per "
        "meta-iteration, and their learning curves. Writes report.md, results.json, CSV files "
        "and plots into --report.",
    )
    _per_family(compare, families, add_compare_arguments)

    families_command = commands.add_parser("families", help="list the installed task families")
    families_command.set_defaults(subparser=families_command)

    bench = commands.add_parser(
        "bench",
        help="time metaopt's engines against TorchOpt, higher and hand-written torch.func",
        description="Time one meta-iteration of each case with every implementation, in one "
        "process, after checking that all of them compute the same meta-gradient. Prints medians "
        "and speed-up ratios; --json writes one record per case and implementation.",
    )
    bench.set_defaults(subparser=bench)
    bench.add_argument(
        "--quick", action="store_true", help="tiny sizes, few repetitions (a smoke test)"
    )
    bench.add_argument(
        "--threads", type=_positive_int, default=None, help="torch threads (default: torch's)"
    )
    bench.add_argument(
        "--repeats",
        type=_positive_int,
        default=None,
        help="timed repetitions (default: 15; quick: 3)",
    )
    bench.add_argument(
        "--min-sample-ms",
        type=_non_negative_float,
        default=10.0,
        metavar="MS",
        help="each timed sample is a block of back-to-back calls of one implementation lasting at "
        "least MS milliseconds (column 'calls'; at most 100 calls); 0: one call per sample, each "
        "right after another implementation's, which charges a fast implementation the refill of "
        "the caches the previous one evicted (default: 10)",
    )
    bench.add_argument(
        "--cases",
        type=_names,
        default=None,
        help="comma-separated case names; GROUP selects every GROUP/... case (default: all)",
    )
    bench.add_argument(
        "--no-memory", action="store_true", help="skip the peak-memory sweep over inner steps"
    )
    bench.add_argument(
        "--no-compiled",
        action="store_true",
        help="skip the metaopt-compiled rows (their torch.compile takes most of a full bench's "
        "time: minutes with a cold cache)",
    )
    bench.add_argument(
        "--json", type=Path, default=None, metavar="PATH", help="write the records as JSON"
    )
    bench.add_argument(
        "--plot", type=Path, default=None, metavar="PATH", help="save the memory plot (PNG)"
    )
    bench.add_argument("--quiet", action="store_true", help="no progress bar or lines")

    from metaopt.tools.scale import add_scale_arguments

    scale = commands.add_parser(
        "scale",
        help="time metaopt train at several process counts (torchrun) and check they agree",
        description="Run metaopt train as a subprocess at each process count (torchrun for more "
        "than one), --repeats times, interleaved. Prints the medians of per-iteration, training "
        "and wall-clock seconds with speed-ups against the smallest count. Fails (exit status 1) "
        "unless short runs (--check-iterations) at every count end with the same "
        "meta-parameters, and the repeats of each count do.",
    )
    _per_family(scale, families, add_scale_arguments)
    return parser


#: The help of a family that declares no ``metaopt.family_options``, until it is named.
_UNDESCRIBED = "(its description and flags: name it, e.g. --help after it)"


def _per_family(
    command: argparse.ArgumentParser,
    families: Mapping[str, DescribedFamily | None],
    add_own: Callable[[argparse.ArgumentParser], None],
) -> None:
    """``command FAMILY``: each family's config flags, then the command's own flags ``add_own``.

    A command flag that shares a name with a config field replaces it ("resolve"): scale's
    ``--threads`` sets the runs' threads, for one.
    """
    per_family = command.add_subparsers(dest="family", required=True, metavar="FAMILY")
    for name, family in families.items():
        if family is None:
            per_family.add_parser(name, help=_UNDESCRIBED)
            continue
        sub = per_family.add_parser(
            name,
            help=family.description,
            description=family.description,
            conflict_handler="resolve",
        )
        sub.set_defaults(subparser=sub)
        add_config_arguments(sub, family)
        add_own(sub)


def _unknown_arguments(parser: argparse.ArgumentParser, unknown: Sequence[str]) -> None:
    """Exit (status 2) naming ``unknown``, the closest flag and ``parser``'s ``--help``."""
    flags = [f for action in parser._actions for f in action.option_strings]
    message = f"unrecognized arguments: {' '.join(unknown)}"
    close = difflib.get_close_matches(unknown[0].split("=")[0], flags, n=1, cutoff=0.6)
    if close:
        message += f" (did you mean {close[0]}?)"
    parser.error(message)


def describe_os_error(error: OSError) -> str:
    """One line for an I/O error: the file, what went wrong (the errno's meaning and name)."""
    assert error.errno is not None
    meaning = f"{os.strerror(error.errno)} ({errno.errorcode.get(error.errno, error.errno)})"
    files = [str(name) for name in (error.filename, error.filename2) if name is not None]
    where = " -> ".join(files) if files else "a file of the run"
    return f"{where}: {meaning}; the files already written are left as they were"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``metaopt`` console script; returns the exit status.

    Ctrl-C before training installs its own handler (while torch and the family load, or the
    run is being set up) is one line and status 130, not a traceback of whatever was importing.
    """
    try:
        with _one_line_warnings():
            return _main(argv)
    except KeyboardInterrupt:
        print("metaopt: interrupted", file=sys.stderr)
        return 130


def _main(argv: Sequence[str] | None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(_described_families(argv))
    args, unknown = parser.parse_known_args(argv)
    subparser = vars(args).pop("subparser", parser)
    if unknown:  # the subcommand's --help, not the top level's, with the flag it resembles
        _unknown_arguments(subparser, unknown)
    if args.command == "families":  # from the families' light options: no torch
        families, broken = _load_families()
        width = max([10, *map(len, families), *map(len, broken)])
        for name, family in families.items():
            missing = missing_requirement(family) if isinstance(family, FamilyOptions) else None
            if missing is not None:
                print(f"{name:{width}s} (unavailable: {missing})")
            else:
                print(f"{name:{width}s} {family.description}")
        for name, why in broken.items():
            print(f"{name:{width}s} (failed to load: {why})")
        return 0
    # The heavy modules load from here on, once the arguments are known to be good.
    from metaopt.training import TrainingInterrupted
    from metaopt.training.lock import RunDirectoryLocked

    try:
        if args.command == "train":
            from metaopt.training import evaluation_summary, resolve_config, resume, train

            family = get_family(args.family)
            overrides = {
                key: value
                for key, value in vars(args).items()
                if key
                not in ("command", "family", "quiet", "tensorboard", "resume", "resume_checkpoint")
            }
            from metaopt.training import TensorBoardHooks, progress_to_stderr
            from metaopt.training.loop import check_iterations_to_train

            if "iterations" in overrides:  # one bound, before the config's check (>= 0)
                check_iterations_to_train(overrides["iterations"])
            progress = False if args.quiet else None
            hooks = [TensorBoardHooks()] if args.tensorboard else []
            with progress_to_stderr(quiet=args.quiet):
                if args.resume is not None:
                    run_dir = resume(
                        args.resume,
                        family=family,
                        overrides=overrides,
                        checkpoint=args.resume_checkpoint,
                        progress=progress,
                        hooks=hooks,
                    )
                else:
                    if args.resume_checkpoint is not None:
                        raise ConfigError("--checkpoint only applies with --resume RUN_DIR")
                    config = resolve_config(family, overrides)
                    run_dir = train(family, config, progress=progress, hooks=hooks)
            if _is_main_process():
                print(evaluation_summary(json.loads((run_dir / "eval.json").read_text())))
                print(f"run directory: {run_dir}")
            return 0
        if args.command == "bench":
            from metaopt.tools.bench import run_bench
            from metaopt.training.progress import progress_to_stderr

            with progress_to_stderr(quiet=args.quiet):
                run_bench(
                    quick=args.quick,
                    threads=args.threads,
                    repeats=args.repeats,
                    min_sample_s=args.min_sample_ms / 1e3,
                    cases=args.cases,
                    memory=not args.no_memory,
                    compiled=not args.no_compiled,
                    json_path=args.json,
                    plot_path=args.plot,
                    progress=False if args.quiet else None,
                )
            return 0
        if args.command == "scale":
            from metaopt.tools.scale import run_scale_command

            return run_scale_command(get_family(args.family), vars(args))
        if args.command == "compare":
            from metaopt.tools.compare import run_compare_command

            return run_compare_command(get_family(args.family), vars(args))
        if args.command == "eval":
            from metaopt.training import evaluate_run, evaluation_summary, progress_to_stderr

            with progress_to_stderr():
                evaluation = evaluate_run(args.run_dir, num_tasks=args.tasks, steps=args.steps)
            if _is_main_process():
                from metaopt.training.evaluation import evaluation_path, evaluation_tag

                own = args.tasks is None and args.steps is None
                path = evaluation_path(args.run_dir, "" if own else evaluation_tag(evaluation))
                print(evaluation_summary(evaluation))
                print(f"evaluation: {path}")
            return 0
    except ConfigError as error:
        print(f"metaopt: error: {error}", file=sys.stderr)
        return 2
    except FloatingPointError as error:  # training diverged (NonFiniteError, a failed iMAML
        # solve): not a bug, and not a usage error
        print(f"metaopt: error: {error}", file=sys.stderr)
        return 1
    except TrainingInterrupted as stop:
        print(f"metaopt: {stop}", file=sys.stderr)
        return stop.exit_status
    except KeyboardInterrupt:
        print("metaopt: interrupted", file=sys.stderr)
        return 130
    except RunDirectoryLocked as error:
        print(f"metaopt: error: {error}", file=sys.stderr)
        return 2
    except OSError as error:
        if error.errno is None:  # not an I/O error from the system: a bug, show the traceback
            raise
        print(f"metaopt: error: {describe_os_error(error)}", file=sys.stderr)
        return 2
    parser.error(f"unknown command {args.command!r}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
