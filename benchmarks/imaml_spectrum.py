"""The spectrum of iMAML's linear system I + H/λ along a training run (docs/results.md).

    OMP_NUM_THREADS=1 python -m benchmarks.imaml_spectrum --every 250 -- sine --algo imaml ...

Trains as ``metaopt train`` does with the arguments after ``--`` (the family, its flags,
``--quiet``), and at every ``--every``-th solve and at a solve that fails the residual check
builds each task's block of I + H/λ densely (one Hessian-vector product per parameter, all tasks
at once: the vectorised engine's system is block-diagonal) and prints, over the meta-batch, the eigenvalue of smallest magnitude, the smallest
and the largest eigenvalue, the largest condition number, and the relative error of the solver's answer
against the dense solve. An eigenvalue near 0 means I + H/λ is nearly singular there: the implicit
meta-gradient (I + H/λ)⁻¹∇ℒ𝑞 is then huge and no iterative solver reaches it in a few steps.
"""

from __future__ import annotations

import argparse
import sys

import torch

from metaopt.algorithms import ConjugateGradientError
from metaopt.rules import IMAMLRule
from metaopt.training import resolve_config, train
from metaopt.training.config import add_config_arguments
from metaopt.training.registry import get_family

Tensors = tuple[torch.Tensor, ...]


def blocks(matvec, b: Tensors) -> torch.Tensor:
    """The tasks' blocks of the block-diagonal matrix ``matvec``, shape (tasks, n, n), float64."""
    tasks = b[0].shape[0]
    sizes = [t[0].numel() for t in b]
    n = sum(sizes)
    columns = []
    for j in range(n):
        unit = torch.zeros(tasks, n, dtype=b[0].dtype)
        unit[:, j] = 1
        parts = torch.split(unit, sizes, dim=1)
        out = matvec(tuple(p.reshape(t.shape) for p, t in zip(parts, b, strict=True)))
        columns.append(torch.cat([o.reshape(tasks, -1) for o in out], dim=1).double())
    matrix = torch.stack(columns, dim=2)
    return (matrix + matrix.transpose(1, 2)) / 2  # symmetric up to rounding


def report(label: str, matvec, b: Tensors, x: Tensors | None) -> None:
    a = blocks(matvec, b)
    eig = torch.linalg.eigvalsh(a)
    rhs = torch.cat([t.reshape(len(a), -1) for t in b], dim=1).double()
    exact = torch.linalg.solve(a, rhs)
    line = (
        f"{label}: min |eig| {float(eig.abs().min()):.3g}, smallest eig "
        f"{float(eig.min()):.3g}, largest eig {float(eig.max()):.3g}, largest condition {float((eig.abs().max(1).values / eig.abs().min(1).values).max()):.3g}, "
        f"‖exact x‖/‖b‖ {float(exact.norm() / rhs.norm()):.3g}"
    )
    if x is not None:
        got = torch.cat([t.reshape(len(a), -1) for t in x], dim=1).double()
        line += f", solver's relative error {float((got - exact).norm() / exact.norm()):.3g}"
    print(line, file=sys.stderr, flush=True)


def train_from_arguments(argv: list[str]) -> None:
    """``metaopt train FAMILY FLAGS`` in this process: the family's flags from its config class,
    and ``--quiet``."""
    family = get_family(argv[0])
    parser = argparse.ArgumentParser(prog=f"metaopt train {argv[0]}")
    add_config_arguments(parser, family)
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    overrides = vars(parser.parse_args(argv[1:]))
    quiet = overrides.pop("quiet")
    train(family, resolve_config(family, overrides), progress=False if quiet else None)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--every", type=int, default=250, help="solves between spectra")
    parser.add_argument("argv", nargs=argparse.REMAINDER, help="-- then metaopt train's args")
    args = parser.parse_args()
    argv = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
    solve = IMAMLRule.solve
    count = [0]

    def checked(self: IMAMLRule, record, matvec, b: Tensors) -> Tensors:
        count[0] += 1
        try:
            x = solve(self, record, matvec, b)
        except ConjugateGradientError:
            report(f"solve {count[0]} (failed)", matvec, b, None)
            raise
        if count[0] % args.every == 0:
            report(f"solve {count[0]}", matvec, b, x)
        return x

    IMAMLRule.solve = checked  # type: ignore[method-assign]
    train_from_arguments(argv)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
