"""Where the compiled engine's Reptile time goes (docs/performance.md, "Reptile").

One process, 1 thread, the bench's ``sine-reptile-5step`` workload (meta-batch 25, 50 points in
minibatches of 10, 5 inner SGD steps, MLP 1-64-64-1 tanh). Times, round-robin, the minimum and
the median over ``--rounds`` rounds (the minimum is the least disturbed estimate on a machine
shared with other work) of:

* ``torch.func`` and ``deepcopy-loop``: the bench's baselines (eager; no metrics);
* ``compiled``: ``Reptile(engine="compiled").meta_backward``, the bench's ``metaopt-compiled``
  row: the meta-gradient, the support losses before adaptation, and the two metrics the
  direction does not need (query losses, support losses after adaptation) deferred;
* ``compiled+metrics``: the same, then ``MetaMetrics.means()`` as the training loop reads them
  every iteration (the deferred metrics' compiled graph runs);
* ``compiled-skip-guards``: ``compiled`` under ``torch.compiler.set_stance(...,
  skip_guard_eval_unsafe=True)`` (dynamo's guards not evaluated: what they cost);
* ``torch.func-compiled``: the ``torch.func`` baseline ``torch.compile``d (no metrics).

Every implementation's direction is checked against the deep-copy loop's first::

    python -m benchmarks.compiled_reptile [--rounds 200] [--backend inductor]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

import metaopt.compiled
from benchmarks.bench_sine import SineBatch, _reptile_deepcopy, _reptile_func, sine_mlp
from metaopt import Reptile
from metaopt.tools.bench import (
    Gradient,
    clear_grads,
    gradients_of,
    relative_difference,
    round_robin,
)


def compiled(batch: SineBatch, read_metrics: bool) -> Callable[[], Gradient]:
    """The compiled engine's Reptile meta-iteration on ``batch``, accumulating into ``.grad``;
    reading the metrics as the training loop does when ``read_metrics``."""
    algo = Reptile(sine_mlp(64, nn.Tanh), 0.02, 5, engine="compiled")
    params = algo.meta_parameters()

    def run() -> Gradient:
        clear_grads(params)
        metrics = algo.meta_backward(batch.reset())
        if read_metrics:
            metrics.means()
        return gradients_of(params)

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--backend", default="inductor")
    args = parser.parse_args()
    torch.set_num_threads(1)
    options = {**metaopt.compiled.compile_options(), "backend": args.backend}
    metaopt.compiled.compile_options = lambda: options  # type: ignore[assignment]
    batch = SineBatch(25, 50, minibatch=10)
    impls = {
        "deepcopy-loop": _reptile_deepcopy(sine_mlp(64, nn.Tanh), batch, 5, 0.02),
        "torch.func": _reptile_func(sine_mlp(64, nn.Tanh), batch, 5, 0.02),
        "compiled": compiled(batch, read_metrics=False),
        "compiled+metrics": compiled(batch, read_metrics=True),
        "torch.func-compiled": torch.compile(
            _reptile_func(sine_mlp(64, nn.Tanh), batch, 5, 0.02),
            backend=args.backend,
            dynamic=False,
        ),
    }
    reference = impls["deepcopy-loop"]()
    for name, fn in impls.items():
        start = time.perf_counter()
        difference = relative_difference(fn(), reference)
        print(
            f"{name}: first call {time.perf_counter() - start:.1f} s, difference {difference:.1e}"
        )
        assert difference <= 1e-4, name
    # Skipping guards is only safe once the one graph exists: time it on the compiled engine's.
    impls["compiled-skip-guards"] = _skip_guards(impls["compiled"])
    with open("/proc/loadavg") as load:
        before = load.read().split()[0]
    samples = round_robin(impls, args.rounds)
    with open("/proc/loadavg") as load:
        after = load.read().split()[0]
    best = {name: min(times) for name, times in samples.items()}
    middle = {name: statistics.median(times) for name, times in samples.items()}
    print(
        f"1 thread, {args.rounds} rounds, torch {torch.__version__}, "
        f"load average {before} before, {after} after"
    )
    print(f"  {'':22s} {'min ms':>8s} {'× torch.func':>13s} {'× deepcopy':>11s}   (median: same)")
    for name in impls:
        print(
            f"  {name:22s} {best[name] * 1e3:8.2f} {best['torch.func'] / best[name]:13.2f}"
            f" {best['deepcopy-loop'] / best[name]:11.2f}   ({middle[name] * 1e3:.2f} ms, "
            f"{middle['torch.func'] / middle[name]:.2f}, "
            f"{middle['deepcopy-loop'] / middle[name]:.2f})"
        )


def _skip_guards(run: Callable[[], Gradient]) -> Callable[[], Gradient]:
    """``run`` with dynamo's guard evaluation skipped (unsafe: a changed batch would not be
    noticed), to measure what the guards cost."""

    def skipping() -> Gradient:
        with torch.compiler.set_stance("default", skip_guard_eval_unsafe=True):
            return run()

    return skipping


if __name__ == "__main__":
    main()
