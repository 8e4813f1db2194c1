"""The flags of ``metaopt eval`` and ``metaopt bench``, and the small readers the command's flags
share; `metaopt.cli` builds the rest of the parser. Like it, this module imports no torch.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from metaopt.options import reader

__all__ = ["add_bench_parser", "add_eval_parser", "device_arguments"]


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


def add_eval_parser(commands: argparse._SubParsersAction[Any]) -> None:
    """``metaopt eval RUN_DIR``: its parser, added to the ``commands`` subparsers."""
    evaluate = commands.add_parser(
        "eval",
        help="re-run the evaluation of a saved run (its eval.json and plots, or with --tasks or "
        "--steps new files beside them)",
        description="Re-run the held-out evaluation of a saved run directory and rewrite eval.json "
        "and its plots. With --tasks or --steps, evaluate those instead and write "
        "eval-<tasks>-<steps>.json (e.g. eval-1000-0,1,5.json) and plots named likewise "
        "(mse_vs_steps-1000-0,1,5.png), leaving the run's eval.json and plots as they were; the "
        "same flags again rewrite that file. A run that kept best.pt (the parameters selected on "
        "validation tasks) is evaluated with it, and says so; --checkpoint last evaluates the "
        "last parameters.",
    )
    evaluate.set_defaults(subparser=evaluate)
    evaluate.add_argument("run_dir", metavar="RUN_DIR", help="directory written by metaopt train")
    evaluate.add_argument(
        "--tasks", type=_positive_int, default=None, help="held-out tasks (default: the run's)"
    )
    steps_help = "adaptation steps, e.g. 0,1,5,10 (default: the family's)"
    evaluate.add_argument("--steps", type=_steps, default=None, help=steps_help)
    evaluate.add_argument(
        "--checkpoint",
        choices=("best", "last"),
        default=None,
        help="the parameters evaluated: best (best.pt, selected on validation tasks) or last "
        "(checkpoint.pt; its files are tagged last: eval-last.json); default: best.pt when the "
        "run has one, as its own final evaluation did, else the last",
    )
    device_arguments(evaluate, None, ": where to evaluate (default: the run's --device)")


def add_bench_parser(commands: argparse._SubParsersAction[Any]) -> None:
    """``metaopt bench``: its parser, added to the ``commands`` subparsers."""
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
    device_arguments(bench, "cpu", " (default: cpu); off the CPU without memory sweep or peak")


def device_arguments(parser: argparse.ArgumentParser, default: str | None, where: str) -> None:
    """``--device`` and ``--precision`` of a command whose flags are not a run's config."""
    parser.add_argument("--device", default=default, help="auto, cpu, cuda, cuda:N or mps" + where)
    parser.add_argument(
        "--precision",
        default=None if default is None else "fp32",
        help="fp32, bf16 or fp16: the forward passes under autocast (default: "
        + ("the run's)" if default is None else "fp32)"),
    )
