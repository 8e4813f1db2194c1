"""The ``metaopt-compiled`` rows of ``metaopt bench``'s sine cases, and a runner for them alone.

``compiled_rows(quick)`` builds, for every sine case of :func:`metaopt.tools.bench.sine_cases`,
the same algorithm on the compiled engine, from the same initial parameters (``sine_mlp`` seeds
0) on the same data (``SineBatch`` seed 0); ``add_compiled(cases, quick)`` adds them to the
cases as ``metaopt-compiled``. The compile happens in the bench's agreement check (the first
call); :func:`metaopt.compiled.compile_seconds` reports it afterwards.

Run alone (prints the sine table with the compiled rows and the compile times)::

    python benchmarks/compiled.py --threads 1 [--quick] [--cases sine-maml-1step,...]
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable

import torch
from torch import nn

from metaopt import MAML, MetaLearner, MetaSGD, Reptile
from metaopt.compiled import compile_seconds
from metaopt.tools.bench import Case, Gradient, SineBatch, _metaopt, sine_cases, sine_mlp, time_case


def compiled_rows(quick: bool) -> dict[str, tuple[Callable[[], Gradient], MetaLearner]]:
    """Case name -> (timing callable, the compiled learner), matching :func:`sine_cases`."""
    tasks, shots = (5, 5) if quick else (25, 10)
    rows: dict[str, tuple[Callable[[], Gradient], MetaLearner]] = {}
    learners: dict[str, tuple[MetaLearner, SineBatch]] = {
        f"sine-maml-{steps}step": (
            MAML(sine_mlp(), 0.01, steps, engine="compiled"),
            SineBatch(tasks, shots),
        )
        for steps in (1, 5)
    }
    learners["sine-metasgd-1step"] = (
        MetaSGD(sine_mlp(), 0.01, 1, engine="compiled"),
        SineBatch(tasks, shots),
    )
    grid = 10 if quick else 50
    learners["sine-reptile-5step"] = (
        Reptile(sine_mlp(64, nn.Tanh), 0.02, 5, engine="compiled"),
        SineBatch(tasks, grid, minibatch=grid // 5),
    )
    for name, (algo, batch) in learners.items():
        rows[name] = (_metaopt(algo, batch), algo)
    return rows


def add_compiled(cases: list[Case], quick: bool) -> tuple[list[Case], dict[str, MetaLearner]]:
    """``cases`` with a ``metaopt-compiled`` row in each sine case; the compiled learners by case
    (for :func:`metaopt.compiled.compile_seconds` once the case has run)."""
    rows = compiled_rows(quick)
    out = []
    for case in cases:
        if case.name in rows:
            impls = {**case.impls, "metaopt-compiled": rows[case.name][0]}
            case = dataclasses.replace(case, impls=impls)
        out.append(case)
    return out, {name: algo for name, (_, algo) in rows.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--cases", default="")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cases, learners = add_compiled(sine_cases(args.quick), args.quick)
    if args.cases:
        cases = [c for c in cases if c.name in args.cases.split(",")]
    print(
        f"{torch.get_num_threads()} thread(s), median of {args.repeats}, torch {torch.__version__}"
    )
    for case in cases:
        timed = time_case(case, repeats=args.repeats, warmup=3)
        compile_s = compile_seconds(learners[case.name])
        print(f"\n{case.name}: {case.description}; compile {compile_s:.1f} s")
        for name, fields in sorted(timed.items(), key=lambda item: item[1]["median_s"]):
            ratios = "".join(
                f"  ×{timed[b]['median_s'] / fields['median_s']:6.2f} vs {b}"
                for b in case.ratios_to
            )
            diff = fields["max_rel_grad_diff"]
            print(f"  {name:17s} {fields['median_s'] * 1e3:9.2f} ms{ratios}  diff {diff:.1e}")


if __name__ == "__main__":
    main()
