"""What computing each matrix product in its faster orientation gives the compiled engine
(docs/performance.md, "Each matrix product in its faster orientation, and fewer guards").

One process, 1 thread. First, the sine MLP's batched products (25 tasks, 10 shots, 40 hidden
units) timed both ways, ``C = A @ B`` and ``C = (Bᵀ @ Aᵀ)ᵀ``, for each layout of the operands (as
stored, or a transposed view), with the pass's own timer. Then, for each of the bench's sine cases,
the compiled engine built twice, without the pass (``post_grad_custom_post_pass=None``) and with
it (the engine's default), inductor's FX-graph cache off so that the pass runs; the products it
swapped; and both engines next to the bench's ``torch.func`` reference and loop baseline, their
meta-gradients checked against the reference, then timed round-robin (each sample the mean of
``--calls`` back-to-back calls; minimum and median over ``--rounds``)::

    python -m benchmarks.matmul_orientation [--rounds 61] [--calls 8] [--cases sine-maml-1step,...]
"""

from __future__ import annotations

import argparse
import functools
import itertools

import torch

import metaopt.compiled
from benchmarks.compiled_wrapper import CASES, baselines, case_batch, compare, compiled_with
from metaopt.matmul_orientation import MARGIN, product_seconds

#: (rows, inner, columns) of the sine MLP's batched products, 25 tasks: the 40 × 40 layer's
#: forward (10 shots × 40), the backward products to its input and to its weight; last, a
#: product with more rows than columns that is not faster swapped.
SHAPES = ((10, 40, 40), (40, 40, 10), (40, 10, 40), (128, 64, 16))


def operand(rows: int, columns: int, transposed: bool) -> torch.Tensor:
    """A ``[25, rows, columns]`` operand, stored as such or as the transpose of its transpose."""
    if transposed:
        return torch.randn(25, columns, rows).transpose(1, 2)
    return torch.randn(25, rows, columns)


def orientations() -> None:
    print("bmm [25, M, K] @ [25, K, N], µs per call (fastest of the timer's blocks):")
    for (m, k, n), (ta, tb) in itertools.product(
        SHAPES, itertools.product((False, True), repeat=2)
    ):
        a, b = operand(m, k, ta), operand(k, n, tb)
        direct = product_seconds(functools.partial(torch.bmm, a, b))
        swapped = product_seconds(
            functools.partial(torch.bmm, b.transpose(1, 2), a.transpose(1, 2))
        )
        layout = f"A{'ᵀ' if ta else ' '} B{'ᵀ' if tb else ' '}"
        print(
            f"  M={m:2d} K={k:2d} N={n:2d}  {layout}  direct {direct * 1e6:6.1f}  "
            f"swapped {swapped * 1e6:6.1f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=61)
    parser.add_argument("--calls", type=int, default=8)
    parser.add_argument("--cases", default=",".join(CASES))
    args = parser.parse_args()
    torch.set_num_threads(1)
    orientations()
    with torch._inductor.config.patch(fx_graph_cache=False):
        for case in args.cases.split(","):
            print(case)
            batch = case_batch(case)
            without, _ = compiled_with(case, batch, post_grad_custom_post_pass=None)
            with_pass, algo = compiled_with(case, batch)
            impls = {"compiled, without the pass": without, "compiled, with the pass": with_pass}
            (engine,) = metaopt.compiled.engine_of(algo)
            for decision in engine.matmul_decisions:
                if decision.swapped:
                    a, b = decision.shapes
                    print(
                        f"  swapped {decision.target} {list(a)} @ {list(b)}: "
                        f"{decision.direct_seconds * 1e6:.1f} → "
                        f"{decision.swapped_seconds * 1e6:.1f} µs (margin {MARGIN})"
                    )
            swapped = sum(decision.swapped for decision in engine.matmul_decisions)
            print(f"  products timed: {len(engine.matmul_decisions)}, swapped: {swapped}")
            impls.update(baselines(case, batch))
            compare(case, impls, args.rounds, args.calls)


if __name__ == "__main__":
    main()
