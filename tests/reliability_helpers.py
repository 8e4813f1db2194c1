"""Shared pieces of the reliability tests: a fast toy family, cheap real families, run comparisons.

Importing this module registers the ``rtoy`` family in-process (for ``metaopt.cli.main`` and
``load_run`` in the same process; a subprocess only sees the entry-point families).
"""

from __future__ import annotations

import json
import os
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

import metaopt
from metaopt import testing as mt
from metaopt.training.checkpoint import load_checkpoint
from metaopt.training.family import ConfigError, TaskFamily, TrainConfig, option
from metaopt.training.loop import WALL_TIME_KEYS
from metaopt.training.registry import get_family, register_family

ALGORITHMS = ("maml", "fomaml", "metasgd", "reptile")

#: Environment of a ``python -m metaopt`` subprocess: one torch thread, like the tests' process.
SUBPROCESS_ENV = {**os.environ, "MPLBACKEND": "Agg", "OMP_NUM_THREADS": "1"}


#: Flags that make the real families' runs cheap (their evaluation included).
CHEAP = {
    "sine": {
        "meta_batch": 2,
        "hidden": 8,
        "baseline_steps": 0,
        "eval_tasks": 2,
        "protocol_steps": 1,
    },
    "mdp": {
        "meta_batch": 2,
        "trajectories": 4,
        "hidden_sizes": (8,),
        "eval_tasks": 2,
        "test_tasks": 2,
        "eval_every": 0,
    },
}


def cli_flags(values: dict[str, Any]) -> list[str]:
    """``{"meta_batch": 2, "hidden_sizes": (8,)}`` -> ``["--meta-batch", "2", "--hidden-sizes", "8"]``."""
    flags = []
    for name, value in values.items():
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            flags.append(flag if value else "--no-" + flag[2:])
        elif isinstance(value, tuple):
            flags += [flag, ",".join(map(str, value))]
        else:
            flags += [flag, str(value)]
    return flags


class ScaledGradient(torch.autograd.Function):
    """Identity forward; backward multiplies the gradient by ``factor`` (NaN, or huge)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, factor: float) -> torch.Tensor:
        ctx.factor = factor
        return x.clone()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad * ctx.factor, None


def poison(loss: torch.Tensor, kind: str) -> torch.Tensor:
    """``kind``: "loss" a NaN loss; "grad" a finite loss with a NaN gradient; "huge" a finite loss
    with a finite but huge (×1e300) gradient, which an outer SGD step at 1e100 overflows."""
    if kind == "loss":
        return loss * float("nan")
    return ScaledGradient.apply(loss, float("nan") if kind == "grad" else 1e300)


class PoisonedTask(mt.LinearTask):
    """A linear task whose query loss is poisoned (loop engine)."""

    kind: str = "loss"

    def query_loss(self, model: torch.nn.Module) -> torch.Tensor:
        return poison(super().query_loss(model), self.kind)


class RToyBatch(mt.LinearTaskBatch):
    """Linear tasks whose task ``poisoned`` (if any) has a poisoned query loss in both engines."""

    poisoned: int | None = None
    kind: str = "loss"

    def query_losses(self, forward: Any) -> torch.Tensor:
        losses = super().query_losses(forward)
        if self.poisoned is None:
            return losses
        i = self.poisoned
        return torch.cat([losses[:i], poison(losses[i : i + 1], self.kind), losses[i + 1 :]])


@dataclass
class LinearToyConfig(TrainConfig):
    """What the linear toy families of the tests share."""

    dim: int = option(4, "dimension of θ")
    meta_batch: int = option(3)
    inner_lr: float = option(0.2)


@dataclass
class RToyConfig(LinearToyConfig):
    iterations: int = option(12)
    outer_lr: float = option(0.05)
    eval_tasks: int = option(5)
    poison: float = option(0.0, "probability that task 1 of a meta-batch is poisoned (tests)")
    poison_kind: str = option(
        "loss", "loss: NaN query loss; grad: NaN meta-gradient only; huge: ×1e300 meta-gradient"
    )

    def validate(self) -> None:
        super().validate()
        if isinstance(self.dim, bool) or not isinstance(self.dim, int) or self.dim < 2:
            raise ConfigError(f"--dim must be an integer >= 2, got {self.dim!r}")
        if not isinstance(self.poison, int | float) or not 0 <= self.poison <= 1:
            raise ConfigError(f"--poison must be a probability in [0, 1], got {self.poison!r}")
        if self.poison_kind not in ("loss", "grad", "huge"):
            raise ConfigError(
                f"--poison-kind must be one of loss, grad, huge; got {self.poison_kind!r}"
            )


@register_family
class RToyFamily(TaskFamily):
    """Linear least-squares tasks with a shared optimum; all randomness from the loop's rng."""

    name = "rtoy"
    description = "linear least-squares tasks (reliability tests)"
    config_class = RToyConfig
    metric = "mse"

    def make_model(self, config: TrainConfig) -> torch.nn.Module:
        assert isinstance(config, RToyConfig)
        torch_init = torch.randn(config.dim, dtype=torch.float64)  # the loop seeded torch
        return mt.LinearModel(torch_init.numpy())

    def sample_tasks(self, config: TrainConfig, rng: np.random.Generator, num_tasks: int):
        assert isinstance(config, RToyConfig)
        tasks = RToyBatch(mt.random_linear_tasks(num_tasks, config.dim, rng))
        for task in tasks:
            optimum = 1.0 + 0.1 * rng.normal(size=config.dim)
            task.b, task.d = task.A @ optimum, task.C @ optimum
        if config.poison and rng.random() < config.poison and num_tasks > 1:
            t = tasks[1]
            tasks[1] = PoisonedTask(t.A, t.b, t.C, t.d)
            tasks[1].kind = tasks.kind = config.poison_kind
            tasks.poisoned = 1
        return tasks

    def evaluate(self, algo, config, run_dir, request):
        return evaluate_on_linear_tasks(algo, config, request.num_tasks, request.steps)


def evaluate_on_linear_tasks(algo, config, num_tasks=None, steps=None) -> dict[str, Any]:
    """A toy family's eval.json: query MSE on held-out linear tasks after 0 and k steps."""
    tasks = mt.random_linear_tasks(
        num_tasks or config.eval_tasks, config.dim, np.random.default_rng(config.eval_seed)
    )
    by_steps = {}
    for k in steps or (0, config.inner_steps):
        losses = []
        for task in tasks:
            with algo.adapt(task, steps=k) as model:
                losses.append(task.query_loss(model).item())
        mean, ci = metaopt.mean_ci95(losses)
        by_steps[str(k)] = {"mean": mean, "ci95": ci}
    return {"metric": "mse", "tasks": len(tasks), "by_steps": by_steps}


def family(name: str) -> TaskFamily:
    """The family ``name``; for sine and mdp, with a minimal final evaluation and no plots.

    Training is untouched: these tests are about the loop, which the family's evaluation does not
    feed back into.
    """
    base = type(get_family(name))
    if name == "rtoy":
        return base()

    def evaluate(self, algo, config, run_dir, request):
        return {"metric": self.metric, "tasks": 0, "by_steps": {}}

    def plot(self, *args, **kwargs):
        return []

    return type(f"Cheap{base.__name__}", (base,), {"evaluate": evaluate, "plot": plot})()


def interrupting(inner: TaskFamily, at: int, signum: int = signal.SIGTERM) -> TaskFamily:
    """``inner`` that sends this process a real ``signum`` while drawing iteration ``at``."""

    def sample_tasks(self, config, rng, num_tasks):
        self.calls = getattr(self, "calls", 0) + 1
        if self.calls == at:
            # To this (the main) thread; its Python handler runs before raise_signal returns.
            signal.raise_signal(signum)
        return type(inner).sample_tasks(self, config, rng, num_tasks)

    cls = type(inner)
    return type(f"Interrupting{cls.__name__}", (cls,), {"sample_tasks": sample_tasks})()


def crashing(inner: TaskFamily, at: int) -> TaskFamily:
    """``inner`` that raises (a crash: nothing is saved) while drawing iteration ``at``."""

    def sample_tasks(self, config, rng, num_tasks):
        self.calls = getattr(self, "calls", 0) + 1
        if self.calls == at:
            raise MemoryError("simulated crash")
        return type(inner).sample_tasks(self, config, rng, num_tasks)

    cls = type(inner)
    return type(f"Crashing{cls.__name__}", (cls,), {"sample_tasks": sample_tasks})()


def metrics(run_dir: Path) -> list[dict[str, Any]]:
    """The rows of ``metrics.jsonl`` without wall-clock time."""
    rows = [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in row.items() if k not in WALL_TIME_KEYS} for row in rows]


def assert_bitwise_equal(a: Any, b: Any, where: str = "state") -> None:
    """Nested dicts/lists of tensors and numbers are equal, tensors bit for bit."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape, where
        assert torch.equal(a.reshape(-1).view(torch.uint8), b.reshape(-1).view(torch.uint8)), (
            f"{where} differs"
        )
    elif isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), f"{where}: keys {set(a) ^ set(b)}"
        for key in a:
            assert_bitwise_equal(a[key], b[key], f"{where}[{key!r}]")
    elif isinstance(a, list | tuple):
        assert isinstance(b, list | tuple) and len(a) == len(b), f"{where}: lengths"
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_bitwise_equal(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def assert_same_run(a: Path, b: Path) -> None:
    """Two runs ended with bit-identical parameters and optimiser state, and equal metrics."""
    first, second = (
        load_checkpoint(Path(a) / "checkpoint.pt"),
        load_checkpoint(Path(b) / "checkpoint.pt"),
    )
    assert first["iteration"] == second["iteration"]
    for key in ("algorithm", "outer", "schedule", "skipped"):
        assert_bitwise_equal(first[key], second[key], key)
    assert_bitwise_equal(first["random"], second["random"], "random")
    assert metrics(a) == metrics(b)
