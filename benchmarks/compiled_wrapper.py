"""What inductor's C++ wrapper gives the compiled engine (docs/performance.md, "C++ wrapper").

One process, 1 thread, the bench's four sine cases (``metaopt bench --cases sine-...``). Each case
builds the compiled engine twice, with inductor's ``cpp_wrapper`` off (the generated kernels
called from a Python wrapper, the engine before this revision) and on (the engine's default
now), next to the bench's ``torch.func`` reference and its loop baseline, checks that every
meta-gradient agrees with the reference, and times them round-robin, each sample the mean of
``--calls`` back-to-back calls (the first call after another implementation's pays to refill the
caches, which ``--neighbours`` measures; five calls share that cost out alike): the minimum (the
least disturbed estimate on a machine shared with other work) and the median over ``--rounds``::

    python -m benchmarks.compiled_wrapper [--rounds 101] [--calls 5] [--cases sine-maml-1step,...]

``--neighbours`` times instead the bench's compiled MAML (1 step) right after each of the bench's
other rows of that case, and after some plain eager work, then runs the bench's own timing of
that case with one call per sample and with five, to show what ``metaopt bench``'s round-robin
(one call per sample, each after another implementation's) adds to a compiled row::

    python -m benchmarks.compiled_wrapper --neighbours [--rounds 31]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torchopt
from torch import nn

import metaopt.compiled
from benchmarks.bench_sine import (
    SineBatch,
    _func_reference,
    _metaopt,
    _reptile_deepcopy,
    _reptile_func,
    _torchopt_loop,
    _with_rates,
    sine_mlp,
)
from benchmarks.bench_sine import cases as bench_cases
from metaopt import MAML, MetaLearner, MetaSGD, Reptile
from metaopt.tools.bench import Gradient, relative_difference, round_robin, time_case

#: The rows whose ``time_case`` medians ``--neighbours`` prints.
COMPARED = ("metaopt-compiled", "torch.func")
#: Largest relative difference from ``torch.func`` accepted before timing (float32).
TOLERANCE = 1e-5
CASES = ("sine-maml-1step", "sine-maml-5step", "sine-metasgd-1step", "sine-reptile-5step")


def learner(case: str) -> MetaLearner:
    """The case's compiled learner (fresh model, same initialisation as the baselines')."""
    if case == "sine-maml-1step":
        return MAML(sine_mlp(), 0.01, 1, engine="compiled")
    if case == "sine-maml-5step":
        return MAML(sine_mlp(), 0.01, 5, engine="compiled")
    if case == "sine-metasgd-1step":
        return MetaSGD(sine_mlp(), 0.01, 1, engine="compiled")
    return Reptile(sine_mlp(64, nn.Tanh), 0.02, 5, engine="compiled")


def baselines(case: str, batch: SineBatch) -> dict[str, Callable[[], Gradient]]:
    """The bench's ``torch.func`` reference and loop baseline of the case."""
    if case == "sine-reptile-5step":
        return {
            "torch.func": _reptile_func(sine_mlp(64, nn.Tanh), batch, 5, 0.02),
            "loop": _reptile_deepcopy(sine_mlp(64, nn.Tanh), batch, 5, 0.02),
        }
    if case == "sine-metasgd-1step":
        rates = MetaSGD(sine_mlp(), 0.01).rate_parameters()
        model = sine_mlp()
        return {
            "torch.func": _func_reference(sine_mlp(), batch, 1, 0.01, rates=rates),
            "loop": _with_rates(model, MetaSGD(model, 0.01), batch),
        }
    steps = 5 if case == "sine-maml-5step" else 1
    return {
        "torch.func": _func_reference(sine_mlp(), batch, steps, 0.01),
        "loop": _torchopt_loop(sine_mlp(), batch, steps, torchopt.sgd(0.01)),
    }


@contextmanager
def compile_options_changed(
    change: Callable[[dict[str, Any]], dict[str, Any]],
) -> Iterator[None]:
    """Inside, the compiled engine builds its engines with ``change(compile_options())`` (fresh
    options, hence a fresh matmul-orientation pass, for each); after, with its own again."""
    default = metaopt.compiled.compile_options
    metaopt.compiled.compile_options = lambda: change(default())  # type: ignore[assignment]
    try:
        yield
    finally:
        metaopt.compiled.compile_options = default  # type: ignore[assignment]


def compiled_with(
    case: str, batch: SineBatch, **inductor: Any
) -> tuple[Callable[[], Gradient], MetaLearner]:
    """The case's ``metaopt-compiled`` row built (and compiled, timed) with the engine's inductor
    settings overridden by ``inductor`` (e.g. ``cpp_wrapper=False``), and its learner."""

    def overridden(options: dict[str, Any]) -> dict[str, Any]:
        return {**options, "inductor_config": {**options["inductor_config"], **inductor}}

    with compile_options_changed(overridden):  # the first call builds and compiles the engine
        algo = learner(case)
        run = _metaopt(algo, batch)
        start = time.perf_counter()
        run()
    changed = ", ".join(f"{key}={value}" for key, value in inductor.items()) or "the defaults"
    print(f"  compiled, {changed}: first call {time.perf_counter() - start:.1f} s")
    return run, algo


def case_batch(case: str) -> SineBatch:
    """The bench's meta-batch of the case: 25 tasks of 10 shots (Reptile: 50 points, minibatches
    of 10)."""
    return SineBatch(25, 50, minibatch=10) if "reptile" in case else SineBatch(25, 10)


def neighbours(rounds: int) -> None:
    """The bench's compiled MAML (1 step) timed alone right after each of the case's other rows
    and after plain eager work, the median of ``rounds``; then the bench's own ``time_case`` on
    that case with one call per sample and with five."""
    case = next(c for c in bench_cases() if c.name == "sine-maml-1step")
    compiled = case.impls["metaopt-compiled"]
    x = torch.randn(256, 256)

    def small_ops() -> None:
        for _ in range(2000):
            torch.add(x[:2], 1)

    def allocate() -> None:
        [torch.randn(1000, 1000) for _ in range(20)]

    before: dict[str, Callable[[], object]] = {
        "nothing": lambda: None,
        **{name: run for name, run in case.impls.items() if name != "metaopt-compiled"},
        "2,000 small eager ops": small_ops,
        "allocating 80 MB": allocate,
    }
    for impl in case.impls.values():
        impl()
        impl()
    samples: dict[str, list[float]] = {name: [] for name in before}
    for _ in range(rounds):
        for name, prelude in before.items():
            prelude()
            start = time.perf_counter()
            compiled()
            samples[name].append(time.perf_counter() - start)
    for name, times in samples.items():
        print(f"compiled MAML (1 step) after {name:24s} {statistics.median(times) * 1e3:.3f} ms")
    for calls in (1, 5):  # the bench's own timing, one call per sample (as it runs) and five
        timed = time_case(case, repeats=rounds, warmup=3, inner=calls)
        medians = (f"{name} {timed[name]['median_s'] * 1e3:.3f} ms" for name in COMPARED)
        print(f"metaopt bench's time_case, {calls} call(s) per sample: " + ", ".join(medians))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=101)
    parser.add_argument("--calls", type=int, default=5)
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--neighbours", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.neighbours:
        neighbours(args.rounds)
        return
    for case in args.cases.split(","):
        print(case)
        batch = case_batch(case)
        impls = {
            "compiled, Python wrapper": compiled_with(case, batch, cpp_wrapper=False)[0],
            "compiled, C++ wrapper": compiled_with(case, batch)[0],
            **baselines(case, batch),
        }
        compare(case, impls, args.rounds, args.calls)


def compare(case: str, impls: dict[str, Callable[[], Gradient]], rounds: int, calls: int) -> None:
    """Check every row's meta-gradient against ``torch.func``'s, then time the rows round-robin
    and print each one's minimum (median) and its ratios to ``torch.func`` and the loop."""
    want = impls["torch.func"]()
    for name, run in impls.items():
        difference = relative_difference(run(), want)
        print(f"  {name}: relative difference to torch.func {difference:.1e}")
        if not difference <= TOLERANCE:
            raise SystemExit(f"{case}: {name}'s meta-gradient is {difference:.1e} off; not timed")
    times = round_robin(impls, rounds, inner=calls)
    reference = {k: (min(v), statistics.median(v)) for k, v in times.items()}
    for name, (low, mid) in reference.items():
        ratios = "".join(
            f"  ×{other} {reference[other][0] / low:.2f} ({reference[other][1] / mid:.2f})"
            for other in ("torch.func", "loop")
            if other in reference and other != name
        )
        print(f"  {name:26s} {low * 1e3:7.3f} ({mid * 1e3:7.3f}) ms{ratios}")


if __name__ == "__main__":
    main()
