"""``metaopt bench``: metaopt's engines against the ways people write meta-learning by hand.

Every case times several implementations of *one* meta-iteration on the same data and the same
initial parameters, in one process, after a warm-up, round-robin over the implementations so
that machine noise falls on all of them alike, and reports medians. Before any time is printed
it checks that all implementations computed the same meta-gradient.

Baselines (written by the cases that compare with them):

* ``torchopt-loop``: the pattern of TorchOpt's examples, one task at a time
  with ``torchopt.MetaSGD`` and ``extract_state_dict`` / ``recover_state_dict``;
* ``higher``: ``higher.innerloop_ctx`` (when installed), ``copy_initial_weights=False``;
* ``torch.func``: a hand-written ``functional_call`` + ``grad`` inner loop, ``vmap`` over tasks;
* ``deepcopy-loop`` (Reptile): the Reptile demo's serial loop, ``deepcopy`` of the state dict,
  manual SGD, interpolation.

Cases plug in through the entry-point group ``metaopt.benchmarks`` (a function
``cases(quick: bool) -> list[Case]``): this project's live in the ``benchmarks`` package, outside
the domains they measure (``benchmarks.bench_sine``, ``benchmarks.bench_omniglot``,
``benchmarks.bench_mdp``, ``benchmarks.bench_cheetah``).

The package: `cases` (what a case is, the registry), `timing` (agreement, then medians), `flops`
(`count_flops`, `matmul_peak`), `memory` (`peak_memory_bytes`, the sweep over inner steps) and
`command` (`run_bench`, the table).
"""

from metaopt.tools.bench.cases import (
    Case,
    Gradient,
    MemorySweep,
    clear_grads,
    domain_cases,
    gradients_of,
)
from metaopt.tools.bench.command import run_bench
from metaopt.tools.bench.flops import count_flops, matmul_peak
from metaopt.tools.bench.memory import memory_sweep, peak_memory_bytes, plot_memory
from metaopt.tools.bench.timing import relative_difference, round_robin, time_case

__all__ = [
    "Case",
    "Gradient",
    "MemorySweep",
    "clear_grads",
    "count_flops",
    "domain_cases",
    "gradients_of",
    "matmul_peak",
    "memory_sweep",
    "peak_memory_bytes",
    "plot_memory",
    "relative_difference",
    "round_robin",
    "run_bench",
    "time_case",
]
