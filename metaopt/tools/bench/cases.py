"""What ``metaopt bench`` measures: cases, the memory sweep, and the domains that register them.

Cases plug in through the entry-point group ``metaopt.benchmarks`` (a function
``cases(quick: bool) -> list[Case]``): this project's live in the ``benchmarks`` package (sine,
Omniglot, the MAML-RL example, HalfCheetah sampling). The bench itself knows no domain.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any

import torch

__all__ = [
    "REDUCED_TOLERANCE",
    "Case",
    "Gradient",
    "MemorySweep",
    "clear_grads",
    "domain_cases",
    "gradients_of",
    "memory_sweeps",
]

Gradient = list[torch.Tensor]

#: The agreement a case asks of its implementations' meta-gradients under bf16 / fp16 autocast
#: (``metaopt bench --precision``): each rounds its products to 8 or 11 significant bits in its
#: own order, so they agree to a few per cent, not to float32's 1e-4.
REDUCED_TOLERANCE = 5e-2


@dataclass(frozen=True)
class MemorySweep:
    """Peak memory of one meta-iteration per algorithm, as the number of inner steps grows.

    Attributes:
        name: The workload in record names: ``memory-<name>-<algorithm>``.
        description: What is measured, for the table's title (``sine, vectorised engine``).
        title: The plot's title (the full-size workload).
        iterations: Inner steps k -> algorithm name -> a zero-argument function running one
            meta-iteration at k inner steps (the algorithms in the order of the table).
    """

    name: str
    description: str
    title: str
    iterations: Callable[[int], dict[str, Callable[[], object]]]


@dataclass
class Case:
    """One workload and the implementations that compute its meta-gradient.

    Attributes:
        name: Short identifier, e.g. ``sine-maml-1step``.
        impls: Implementation name -> zero-argument function running one meta-iteration and
            returning the meta-gradient (a list of tensors in a fixed order).
        reference: The implementation others are compared with.
        tolerance: Largest relative difference of meta-gradients accepted as "the same".
        description: What the case measures.
        ratios_to: Implementations the speed-ups are stated against.
        stochastic: Implementations that sample their own random numbers (an RL loop stepping
            its own environments): timed, but their meta-gradient cannot be compared.
        max_repeats: Fewer repetitions for a case whose baseline takes seconds.
        flops_from: The implementation whose meta-iteration
            `count_flops` counts once; the count stands for every
            implementation (they do the same arithmetic), and the bench reports achieved FLOP/s
            and its fraction of the measured matmul peak. ``None``: no FLOP figures.
        memory: A peak-memory sweep over inner steps on this case's workload, run once per
            bench whichever cases are selected (``--no-memory`` skips it). ``None``: none.
        compiled: Implementations that ``torch.compile`` on their first call (the agreement
            check, before any timing), each with a function called after the case has run that
            returns the compile's record fields: ``compile_s`` (seconds of that first call) and
            ``compile_cache`` (``"cold"``: inductor generated code; ``"warm"``: it loaded all of
            it from its persistent cache; ``None``: a backend without that cache). The bench
            prints them in their own column, and ``--no-compiled`` leaves these rows out.
        steps: Environment steps one call simulates (a sampler's case); its records then carry
            ``steps_per_second``, ``cores`` and ``steps_per_second_per_core``. ``None``: none.
        cores: Implementation -> the processes or threads it computes on (default: the bench's
            torch threads).
        on_request: Run only when ``--cases`` names the case (or its group): a case of many
            minutes that would swamp the default run.
    """

    name: str
    impls: dict[str, Callable[[], Gradient]]
    reference: str
    tolerance: float = 1e-4
    description: str = ""
    ratios_to: tuple[str, ...] = field(default_factory=tuple)
    stochastic: tuple[str, ...] = field(default_factory=tuple)
    max_repeats: int | None = None
    flops_from: str | None = None
    memory: MemorySweep | None = None
    compiled: dict[str, Callable[[], dict[str, Any]]] = field(default_factory=dict)
    steps: int | None = None
    cores: dict[str, int] = field(default_factory=dict)
    on_request: bool = False

    def on(self, device: torch.device, dtype: torch.dtype | None) -> Case:
        """This case with each implementation run under autocast to ``dtype`` (``None``: none)
        and, on CUDA, synchronised, so that a timed call ends when its kernels do; the agreement
        tolerance at least `REDUCED_TOLERANCE` under autocast (implementations round apart)."""
        if device.type == "cpu" and dtype is None:
            return self

        def wrapped(fn: Callable[[], Gradient]) -> Callable[[], Gradient]:
            def run() -> Gradient:
                with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                    gradient = fn()
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                return gradient

            return run

        impls = {name: wrapped(fn) for name, fn in self.impls.items()}
        tolerance = self.tolerance if dtype is None else max(self.tolerance, REDUCED_TOLERANCE)
        return dataclasses.replace(self, impls=impls, tolerance=tolerance)

    def without_compiled(self) -> Case:
        """This case without its compiled implementations (``metaopt bench --no-compiled``)."""
        impls = {name: fn for name, fn in self.impls.items() if name not in self.compiled}
        return dataclasses.replace(self, impls=impls, compiled={})


def gradients_of(params: Sequence[torch.Tensor]) -> Gradient:
    """The parameters' ``.grad`` (zeros where there is none): one meta-gradient.

    Not copies: an implementation starts from `clear_grads`, so its next call gives the
    parameters new ``.grad`` tensors and leaves these as they are; a copy per tensor would add
    the same few microseconds to every row's time, a good part of a compiled row's."""
    return [p.grad.detach() if p.grad is not None else torch.zeros_like(p) for p in params]


def clear_grads(params: Sequence[torch.Tensor]) -> None:
    """Drop the parameters' ``.grad`` before a meta-iteration accumulates a new one."""
    for p in params:
        p.grad = None


def domain_cases(quick: bool) -> list[Case]:
    """Cases that installed packages register under the ``metaopt.benchmarks`` entry points,
    in the order of the entry points' names."""
    found = []
    for ep in sorted(entry_points(group="metaopt.benchmarks"), key=lambda ep: ep.name):
        found.extend(ep.load()(quick))
    return found


def memory_sweeps(cases: Sequence[Case]) -> list[MemorySweep]:
    """The distinct memory sweeps the cases carry, in case order."""
    sweeps: list[MemorySweep] = []
    for case in cases:
        if case.memory is not None and case.memory not in sweeps:
            sweeps.append(case.memory)
    return sweeps
