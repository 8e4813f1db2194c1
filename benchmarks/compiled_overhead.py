"""Where a compiled 1-step meta-iteration's time goes (docs/performance.md, "Blocks of calls").

One process, 1 thread, the bench's sine MAML and Meta-SGD cases at 1 inner step: each case's
compiled learner next to the bench's ``torch.func`` reference, timed round-robin, each sample
the mean of ``--calls`` back-to-back calls after one untimed call (which refills the caches the
previous row's calls evicted, so that the rows compare steady states), the median over
``--rounds``, at three depths:

* ``meta_backward``: the learner's call, as training and the bench make it;
* ``engine call``: the compiled engine's own call (``metaopt.compiled.engine_of(algo)[0]``),
  without the learner's checks, its one-thread guard and its engine dispatch; ``every guard``,
  the same with all of dynamo's guards checked (the engine without its guard filter,
  :func:`metaopt.compiled.library_guards_dropped`);
* ``C++ entry``: the time inside the graph's generated C++ (its kernels, ``bmm`` calls and
  buffer allocation), from a ``cProfile`` of ``--profiled`` more calls, since only the profiler
  sees it apart from dynamo's guards and AOTAutograd's wrapper around it.

The difference between the first two is metaopt's Python around the engine; between the last
two, dynamo's guard check, AOTAutograd's wrapper and the engine's own Python::

    python -m benchmarks.compiled_overhead [--rounds 41] [--calls 8] [--profiled 2000]
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import statistics
from collections.abc import Callable

import torch

import metaopt.compiled
from benchmarks.bench_sine import SineBatch, _func_reference, sine_mlp
from benchmarks.compiled_wrapper import compile_options_changed
from benchmarks.compiled_wrapper import learner as case_learner
from metaopt import MetaSGD
from metaopt.tools.bench import round_robin


def case(name: str, batch: SineBatch) -> dict[str, Callable[[], object]]:
    """The case's timed calls (after one compiling call each), by row name."""
    learner, engine_call = build(name, batch)
    # the same engine with every one of dynamo's guards checked (no guard filter)
    with compile_options_changed(
        lambda options: {k: v for k, v in options.items() if k != "options"}
    ):
        _, every_guard = build(name, batch)
    rates = MetaSGD(sine_mlp(), 0.01).rate_parameters() if name == "metasgd" else None
    return {
        f"{name} meta_backward": learner,
        f"{name} engine call": engine_call,
        f"{name} engine call, every guard": every_guard,
        f"{name} torch.func": _func_reference(sine_mlp(), batch, 1, 0.01, rates=rates),
    }


def build(name: str, batch: SineBatch) -> tuple[Callable[[], object], Callable[[], object]]:
    """The ``meta_backward`` call of the case's compiled learner (compiled by one call) and its
    engine's call."""
    algo = case_learner(f"sine-{name}-1step")  # the bench's compiled learner of the case
    params = algo.meta_parameters()

    def learner() -> None:
        for p in params:
            p.grad = None
        algo.meta_backward(batch)

    learner()
    (engine,) = metaopt.compiled.engine_of(algo)

    def engine_call() -> None:
        for p in params:
            p.grad = None
        engine(batch, 1 / len(batch))

    return learner, engine_call


def entry_seconds(call: Callable[[], object], count: int) -> float:
    """Seconds per call spent in the generated C++ entry point, by ``cProfile``."""
    profile = cProfile.Profile()
    profile.enable()
    for _ in range(count):
        call()
    profile.disable()
    stats = pstats.Stats(profile).stats  # type: ignore[attr-defined]
    inside = sum(row[2] for key, row in stats.items() if "inductor_entry" in key[2])
    return inside / count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=41, help="samples per row (default: 41)")
    parser.add_argument("--calls", type=int, default=8, help="calls per sample (default: 8)")
    parser.add_argument(
        "--profiled", type=int, default=2000, help="calls under cProfile (default: 2000)"
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    batch = SineBatch(25, 10)
    impls = {**case("maml", batch), **case("metasgd", batch)}
    times = round_robin(impls, args.rounds, args.calls, untimed=1)
    print(
        f"1 thread, median (minimum) of {args.rounds} samples of {args.calls} calls after an "
        "untimed one, ms:"
    )
    for name, samples in times.items():
        print(f"  {name:34s} {statistics.median(samples) * 1e3:7.3f} ({min(samples) * 1e3:.3f})")
    for name in ("maml", "metasgd"):
        seconds = entry_seconds(impls[f"{name} engine call"], args.profiled)
        print(f"  {name + ' C++ entry':34s} {seconds * 1e3:7.3f} (cProfile, {args.profiled} calls)")


if __name__ == "__main__":
    main()
