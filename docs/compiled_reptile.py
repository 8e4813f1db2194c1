"""Where the compiled engine's Reptile time goes (docs/performance.md, "Reptile").

One process, 1 thread, the bench's ``sine-reptile-5step`` workload (meta-batch 25, 50 points in
minibatches of 10, 5 inner SGD steps, MLP 1-64-64-1 tanh). Times, round-robin, the minimum over
``--rounds`` rounds (the minimum, not the median: on a machine shared with other work it is the
least disturbed estimate) of:

* ``torch.func`` and ``deepcopy-loop``: the bench's baselines (eager);
* ``compiled``: the compiled engine's meta-iteration (meta-gradient and per-task metrics);
* ``compiled-no-metrics``: the same with a batch whose query losses and support losses after
  adaptation are constants, so inductor drops those two forward passes on 50 points;
* ``compiled-skip-guards``: ``compiled`` under ``torch.compiler.set_stance(...,
  skip_guard_eval_unsafe=True)`` (dynamo's guards on the meta-batch not evaluated);
* ``torch.func-compiled``: the ``torch.func`` baseline ``torch.compile``d (no metrics).

Every implementation's direction is checked against the deep-copy loop's first::

    python docs/compiled_reptile.py [--rounds 60] [--backend inductor]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from metaopt.compiled import CompiledMetaGradient
from metaopt.tools.bench import (
    Gradient,
    clear_grads,
    gradients_of,
    relative_difference,
    round_robin,
)
from supervised.bench_sine import SineBatch, _reptile_deepcopy, _reptile_func, sine_mlp


class WithoutMetrics(SineBatch):
    """The bench's batch with constant query losses and support losses after adaptation."""

    def query_losses(self, forward: Any) -> torch.Tensor:
        return self.xq.new_zeros(self.xq.shape[0])

    def support_losses(self, forward: Any, step: int | None) -> torch.Tensor:
        if step is None:
            return self.xq.new_zeros(self.xq.shape[0])
        return super().support_losses(forward, step)


def compiled(batch: SineBatch, backend: str) -> Callable[[], Gradient]:
    """The compiled engine's Reptile meta-iteration on ``batch``, accumulating into ``.grad``."""
    model = sine_mlp(64, nn.Tanh)
    engine = CompiledMetaGradient(
        model,
        [],
        kind="reptile",
        steps=5,
        first_order=False,
        inner_optimizer="sgd",
        inner_lr=0.02,
        options={"backend": backend},
    )
    params = list(model.parameters())

    def run() -> Gradient:
        clear_grads(params)
        engine(batch.reset(), 1 / len(batch))
        return gradients_of(params)

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=60)
    parser.add_argument("--backend", default="inductor")
    args = parser.parse_args()
    torch.set_num_threads(1)
    batch = SineBatch(25, 50, minibatch=10)
    impls = {
        "deepcopy-loop": _reptile_deepcopy(sine_mlp(64, nn.Tanh), batch, 5, 0.02),
        "torch.func": _reptile_func(sine_mlp(64, nn.Tanh), batch, 5, 0.02),
        "compiled": compiled(batch, args.backend),
        "compiled-no-metrics": compiled(WithoutMetrics(25, 50, minibatch=10), args.backend),
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
    samples = round_robin(impls, args.rounds)
    best = {name: min(times) for name, times in samples.items()}
    print(f"1 thread, minimum over {args.rounds} rounds, torch {torch.__version__}")
    for name, seconds in best.items():
        print(
            f"  {name:22s} {seconds * 1e3:8.2f} ms  × {best['torch.func'] / seconds:5.2f} torch.func"
            f"  × {best['deepcopy-loop'] / seconds:6.2f} deepcopy-loop"
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
