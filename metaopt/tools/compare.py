r"""Second- versus first-order: ``metaopt compare`` and the functions behind it.

For one task family and one config, on the same meta-batch and the same initialisation, it
computes the meta-gradients of second-order MAML, first-order MAML, Meta-SGD and Reptile and
measures, against second-order MAML's:

* the cosine similarity and the norm ratio, over all of θ and per layer (parameters grouped by
  module: ``net.0.weight`` and ``net.0.bias`` form ``net.0``), for each number of inner steps
  (``--steps``, default 1, 2, 5, 10), at initialisation and at ``--checkpoints`` evenly spaced
  iterations of a second-order MAML run;
* the wall time of one meta-iteration (``meta_backward`` and the outer step; fastest and median
  of ``--repeats``, round-robin over the methods, after a warm-up) and the peak of the bytes
  autograd keeps saved for the backward pass (:class:`SavedTensorMeter`);
* learning curves: a full ``metaopt train`` run per method from the same seed, with a held-out
  post-adaptation query loss (and the family's own periodic evaluation) every few iterations,
  against iterations and against training wall-clock seconds.

What is compared, exactly:

* Meta-SGD: the θ part of its meta-gradient against MAML's; the gradient of its learned rates
  has no MAML counterpart, so its norm is reported on its own. Its rates start at ``inner_lr``,
  where its θ-gradient equals MAML's (a consistency check).
* Reptile: its direction (1/B) Σᵢ (θ − θ̃ᵢ), in parameter units, not loss-gradient units: the
  cosine compares directions, the norm ratio is a different quantity.
* "maml, other batch": second-order MAML on an independent meta-batch of the same size, so that
  the agreement of the other methods can be read against the meta-batch sampling noise.

Every method gets the tasks of an identically seeded generator (``family.sample_tasks`` with a
fresh ``numpy.random.default_rng``), so tasks that carry state or sample with their own
generator start identical. A task whose losses sample data with the model it is handed (RL)
still sees different samples once two methods' parameters differ.

The core of the measurements is domain-free: only ``make_model``, ``sample_tasks``,
``periodic_eval`` and the :class:`~metaopt.task.Task` losses are used.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import math
import platform
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from metaopt.algorithms import MetaLearner
from metaopt.task import Task
from metaopt.training import (
    build_algorithm,
    build_outer_optimizer,
    new_directory,
    package_versions,
    train,
)
from metaopt.training.family import ALGORITHMS, ConfigError, TaskFamily, TrainConfig, flag
from metaopt.training.hooks import TrainingHooks

__all__ = [
    "DEFAULT_STEPS",
    "HELDOUT_KEY",
    "OTHER_BATCH",
    "REFERENCE",
    "Agreement",
    "CompareOptions",
    "MetaGradient",
    "SavedTensorMeter",
    "Timing",
    "add_compare_arguments",
    "agreement",
    "checkpoint_iterations",
    "compare",
    "comparison_seeds",
    "cosine",
    "family_curve_key",
    "heldout_query_loss",
    "initial_state",
    "interpret",
    "layer_of",
    "meta_gradient",
    "method_config",
    "parse_methods",
    "plot_cosines",
    "plot_curves",
    "render_report",
    "run_compare_command",
    "summarize_batches",
    "time_meta_iterations",
]

#: The algorithm every other one is compared with.
REFERENCE = "maml"
#: Second-order MAML on an independent meta-batch: the meta-batch sampling noise.
OTHER_BATCH = "maml-other-batch"
DEFAULT_STEPS = (1, 2, 5, 10)
#: Key of the domain-free held-out loss in learning curves (and in the runs' metrics.jsonl).
HELDOUT_KEY = "heldout_query_loss"

LABELS = {
    "maml": "MAML (second order)",
    "fomaml": "first-order MAML",
    "metasgd": "Meta-SGD",
    "reptile": "Reptile",
    OTHER_BATCH: "MAML, other batch",
}
COLORS = {"maml": "C0", "fomaml": "C1", "metasgd": "C2", "reptile": "C3", OTHER_BATCH: "0.55"}

# Streams apart from the training tasks (which come from default_rng(seed)): the compared
# meta-batches, the extra "other batch" of a one-batch comparison, and the held-out tasks.
_OTHER_BATCH_STREAM = 0x0B47C4
_BATCH_STREAM = 0xC0517E
_HELDOUT_STREAM = 0x4E1D0

ModelState = dict[str, torch.Tensor]


@dataclass(frozen=True)
class CompareOptions:
    """What ``metaopt compare`` measures and how much it spends; the task flags are the config's.

    Attributes:
        methods: Algorithms compared with second-order MAML (which is always included).
        steps: Inner-step counts of the gradient and cost comparisons.
        checkpoints: Points of the second-order run, evenly spaced over ``config.iterations``,
            at which the gradients are compared again (0: at initialisation only).
        repeats: Timed meta-iterations per method and step count (after one warm-up).
        curves: Run full meta-training for every method (otherwise only for MAML, and only when
            ``checkpoints`` needs it).
        curve_every: Held-out evaluation every N iterations of those runs (0: about 20 points).
        heldout_tasks: Tasks of the domain-free held-out query loss.
        batches: Independent meta-batches the gradient comparison is averaged over.
        truth_batches: Batches of the comparison with the exact meta-gradient, for families
            that can compute one (``TaskFamily.compare_with_truth``); 0 skips it.
    """

    methods: tuple[str, ...] = ALGORITHMS
    steps: tuple[int, ...] = DEFAULT_STEPS
    checkpoints: int = 3
    repeats: int = 5
    curves: bool = True
    curve_every: int = 0
    heldout_tasks: int = 50
    batches: int = 4
    truth_batches: int = 20

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the first flag that is out of range."""
        unknown = [m for m in self.methods if m not in ALGORITHMS]
        if unknown or not self.methods:
            raise ConfigError(
                f"--methods must be a comma-separated subset of {', '.join(ALGORITHMS)}; "
                f"got {','.join(self.methods)!r}"
            )
        if not self.steps or any(isinstance(s, bool) or s < 1 for s in self.steps):
            raise ConfigError(f"--steps must be integers >= 1, got {list(self.steps)}")
        for name, low in (
            ("checkpoints", 0),
            ("repeats", 1),
            ("curve_every", 0),
            ("batches", 1),
            ("truth_batches", 0),
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ConfigError(f"{flag(name)} must be an integer >= {low}, got {value!r}")
        if self.heldout_tasks < 1:
            raise ConfigError(f"--heldout-tasks must be an integer >= 1, got {self.heldout_tasks}")

    @property
    def all_methods(self) -> tuple[str, ...]:
        """Second-order MAML first, then the others in the order of ``ALGORITHMS``."""
        chosen = set(self.methods) | {REFERENCE}
        return tuple(m for m in ALGORITHMS if m in chosen)


# -- the functional core: agreement between two meta-gradients -----------------------------------


def layer_of(name: str) -> str:
    """The module a parameter belongs to: ``net.0.weight`` -> ``net.0``; ``a`` -> ``a``."""
    return name.rsplit(".", 1)[0] if "." in name else name


def _flat(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    return torch.cat([t.detach().reshape(-1).double() for t in tensors])


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """Cosine similarity of two flat vectors in float64; NaN when either is zero."""
    a, b = a.double(), b.double()
    denominator = float(a.norm() * b.norm())
    return float(a @ b) / denominator if denominator > 0 else math.nan


def _ratio(a: torch.Tensor, b: torch.Tensor) -> float:
    reference = float(b.double().norm())
    return float(a.double().norm()) / reference if reference > 0 else math.nan


@dataclass(frozen=True)
class Agreement:
    """How a meta-gradient compares with a reference one.

    Attributes:
        cosine: Cosine similarity over all of θ.
        norm_ratio: ‖g‖ / ‖g_reference‖.
        norm: ‖g‖.
        reference_norm: ‖g_reference‖.
        layers: Per module: ``{"cosine": ..., "norm_ratio": ...}``.
    """

    cosine: float
    norm_ratio: float
    norm: float
    reference_norm: float
    layers: dict[str, dict[str, float]]


def agreement(
    reference: Mapping[str, torch.Tensor], other: Mapping[str, torch.Tensor]
) -> Agreement:
    """Cosine and norm ratio of ``other`` against ``reference``, overall and per layer.

    Both map parameter names to gradients of the same shapes.

    Raises:
        ValueError: when the two do not hold the same parameters.
    """
    if list(reference) != list(other):
        raise ValueError(
            f"the meta-gradients hold different parameters: {list(reference)} vs {list(other)}"
        )
    names = list(reference)
    ref, oth = _flat([reference[n] for n in names]), _flat([other[n] for n in names])
    layers: dict[str, dict[str, float]] = {}
    for layer in dict.fromkeys(layer_of(n) for n in names):
        members = [n for n in names if layer_of(n) == layer]
        a, b = _flat([other[n] for n in members]), _flat([reference[n] for n in members])
        layers[layer] = {"cosine": cosine(a, b), "norm_ratio": _ratio(a, b)}
    return Agreement(
        cosine=cosine(oth, ref),
        norm_ratio=_ratio(oth, ref),
        norm=float(oth.norm()),
        reference_norm=float(ref.norm()),
        layers=layers,
    )


def _on_batches(
    family: TaskFamily,
    config: TrainConfig,
    state: ModelState,
    steps: int,
    method: str,
    seeds: Sequence[Sequence[int]],
) -> list[MetaGradient]:
    return [
        meta_gradient(family, config, method, state, steps=steps, task_seed=seed) for seed in seeds
    ]


def summarize_batches(
    references: Sequence[MetaGradient], others: Sequence[MetaGradient]
) -> dict[str, Any]:
    """The agreement of ``others[b]`` with ``references[b]``, averaged over the meta-batches b.

    ``cosine`` and ``norm_ratio`` are means over the batches where both meta-gradients are
    finite (``cosine_sd``: the standard deviation, 0 for one batch; ``None`` when no batch is
    finite); ``nonfinite_reference`` and ``nonfinite`` count the batches where second-order MAML's
    or the other method's meta-gradient has a NaN or infinite entry (a diverging inner loop).
    ``layers`` holds the per-layer means; ``per_batch`` each batch's cosine and norm ratio.
    """
    pairs = list(zip(references, others, strict=True))
    found = [agreement(r.theta, o.theta) for r, o in pairs]
    usable = [a for a, (r, o) in zip(found, pairs, strict=True) if r.finite and o.finite]

    def mean(values: Sequence[float]) -> float | None:
        return float(np.mean(values)) if values else None

    cosines = [a.cosine for a in usable]
    rates = [o.rates_norm for r, o in pairs if o.rates_norm is not None and r.finite and o.finite]
    layers = {
        layer: {
            key: mean([a.layers[layer][key] for a in usable]) for key in ("cosine", "norm_ratio")
        }
        for layer in found[0].layers
    }
    return {
        "cosine": mean(cosines),
        "cosine_sd": float(np.std(cosines, ddof=1)) if len(cosines) > 1 else 0.0,
        "norm_ratio": mean([a.norm_ratio for a in usable]),
        "norm": mean([a.norm for a in usable]),
        "reference_norm": mean([a.reference_norm for a in usable]),
        "layers": layers,
        "rates_grad_norm": mean(rates),
        "query_loss": mean([o.query for r, o in pairs if r.finite and o.finite]),
        "reference_query_loss": mean([r.query for r, o in pairs if r.finite and o.finite]),
        "nonfinite_reference": sum(not r.finite for r in references),
        "nonfinite": sum(not o.finite for o in others),
        "per_batch": [{"cosine": a.cosine, "norm_ratio": a.norm_ratio} for a in found],
    }


def comparison_seeds(config: TrainConfig, batches: int) -> list[list[int]]:
    """Seeds of the compared meta-batches: batch b comes from ``default_rng([stream, seed, b])``."""
    return [[_BATCH_STREAM, config.seed, b] for b in range(batches)]


# -- measuring one method ------------------------------------------------------------------------


def _state(model: nn.Module) -> ModelState:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def initial_state(family: TaskFamily, config: TrainConfig) -> ModelState:
    """The model's state at initialisation, as ``metaopt train`` builds it (seeded by config.seed).

    The global torch RNG is left as it was.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        return _state(family.make_model(config))


def method_config(config: TrainConfig, method: str) -> TrainConfig:
    """``config`` for ``method``: Meta-SGD's inner update is always SGD (with learned rates)."""
    optimizer = "sgd" if method == "metasgd" else config.inner_optimizer
    return dataclasses.replace(config, algo=method, inner_optimizer=optimizer)


def _algorithm(
    family: TaskFamily, config: TrainConfig, method: str, steps: int, state: ModelState
) -> tuple[TrainConfig, MetaLearner]:
    """``method`` with ``steps`` inner steps around a fresh model loaded with ``state``."""
    config = dataclasses.replace(method_config(config, method), inner_steps=steps)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model = family.make_model(config)
    model.load_state_dict(state)
    return config, build_algorithm(config, model)


def _draw(
    family: TaskFamily, config: TrainConfig, seed: int | Sequence[int], num_tasks: int
) -> Sequence[Task]:
    return family.sample_tasks(config, np.random.default_rng(seed), num_tasks)


class MetaGradient(NamedTuple):
    """One method's meta-gradient on one meta-batch.

    Attributes:
        theta: Gradient of each trainable model parameter, by name.
        rates_norm: Meta-SGD: norm of the gradient of its learned rates; otherwise ``None``.
        query: Mean query loss of the meta-batch after adaptation.
        finite: Whether every entry of ``theta`` is finite.
    """

    theta: dict[str, torch.Tensor]
    rates_norm: float | None
    query: float
    finite: bool


def meta_gradient(
    family: TaskFamily,
    config: TrainConfig,
    method: str,
    state: ModelState,
    *,
    steps: int,
    task_seed: int | Sequence[int],
) -> MetaGradient:
    """``method``'s meta-gradient at ``state`` with ``steps`` inner steps.

    The meta-batch (``config.meta_batch`` tasks) is drawn from ``default_rng(task_seed)``, afresh
    for each call, so every method sees identical tasks in identical generator states.
    """
    config, algo = _algorithm(family, config, method, steps, state)
    tasks = _draw(family, config, task_seed, config.meta_batch)
    for p in algo.meta_parameters():
        p.grad = None
    metrics = algo.meta_backward(tasks)
    theta = {
        name: p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p)
        for name, p in algo.model.named_parameters()
        if p.requires_grad
    }
    rates_norm = None
    if algo.rate_parameters():
        grads = [r.grad for r in algo.rate_parameters() if r.grad is not None]
        rates_norm = float(_flat(grads).norm()) if grads else 0.0
    finite = all(bool(torch.isfinite(g).all()) for g in theta.values())
    return MetaGradient(theta, rates_norm, metrics.query.mean().item(), finite)


class _Saved:
    """What the pack hook hands autograd: the tensor, and a release of its bytes when freed."""

    __slots__ = ("key", "meter", "tensor")

    def __init__(self, meter: SavedTensorMeter, key: int, tensor: torch.Tensor) -> None:
        self.meter, self.key, self.tensor = meter, key, tensor

    def __del__(self) -> None:
        self.meter._release(self.key)


class SavedTensorMeter(AbstractContextManager["SavedTensorMeter"]):
    """Peak bytes of the tensors autograd keeps for backward, while the context is active.

    Every tensor an operation saves for its backward pass goes through a
    ``torch.autograd.graph.saved_tensors_hooks`` pack hook; the meter counts the bytes of its
    storage (once per storage, however many operations save it) from then until the graph that
    holds it is freed. The peak is what second-order MAML's graph through the inner steps costs
    on top of the model and the data: deterministic, independent of the allocator, CPU or GPU.
    It does not count activations that are not saved, gradients or optimiser state.
    """

    def __init__(self) -> None:
        self.live_bytes = 0
        self.peak_bytes = 0
        self._counts: dict[int, int] = {}
        self._sizes: dict[int, int] = {}
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack)

    def _pack(self, tensor: torch.Tensor) -> _Saved:
        try:
            storage = tensor.untyped_storage()
            key, size = storage.data_ptr(), storage.nbytes()
        except (RuntimeError, NotImplementedError):  # tensors without a plain storage
            key, size = id(tensor), tensor.numel() * tensor.element_size()
        if self._counts.get(key, 0) == 0:
            self._sizes[key] = size
            self.live_bytes += size
            self.peak_bytes = max(self.peak_bytes, self.live_bytes)
        self._counts[key] = self._counts.get(key, 0) + 1
        return _Saved(self, key, tensor)

    @staticmethod
    def _unpack(saved: _Saved) -> torch.Tensor:
        return saved.tensor

    def _release(self, key: int) -> None:
        self._counts[key] -= 1
        if self._counts[key] == 0:
            self.live_bytes -= self._sizes.pop(key)
            del self._counts[key]

    def __enter__(self) -> SavedTensorMeter:
        self._hooks.__enter__()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._hooks.__exit__(kind, error, traceback)


@dataclass(frozen=True)
class Timing:
    """Cost of one meta-iteration of one method.

    Attributes:
        method: The algorithm.
        steps: Inner steps.
        median_s: Median wall time of ``zero_grad``, ``meta_backward`` and the outer step.
        q1_s: First quartile.
        q3_s: Third quartile.
        min_s: Fastest repetition (the least disturbed by other processes).
        repeats: Timed repetitions (after one warm-up).
        saved_peak_bytes: :class:`SavedTensorMeter` peak during the warm-up iteration.
    """

    method: str
    steps: int
    median_s: float
    q1_s: float
    q3_s: float
    min_s: float
    repeats: int
    saved_peak_bytes: int


class _Timed:
    """One method ready to be timed: a fresh model at ``state`` and its outer optimiser."""

    def __init__(
        self,
        family: TaskFamily,
        config: TrainConfig,
        method: str,
        state: ModelState,
        steps: int,
        task_seed: int | Sequence[int],
    ) -> None:
        self.family, self.state, self.task_seed = family, state, task_seed
        self.config, self.algo = _algorithm(family, config, method, steps, state)
        self.outer, _ = build_outer_optimizer(self.config, self.algo)
        self.learned = self.algo.learned_state()

    def reset(self) -> Sequence[Task]:
        """Back to ``state`` (rates included) and the same tasks, untimed."""
        self.algo.model.load_state_dict(self.state)
        self.algo.load_learned_state(self.learned)
        return _draw(self.family, self.config, self.task_seed, self.config.meta_batch)

    def iteration(self, tasks: Sequence[Task]) -> float:
        start = time.perf_counter()
        self.outer.zero_grad(set_to_none=True)
        self.algo.meta_backward(tasks)
        self.outer.step()
        return time.perf_counter() - start


def time_meta_iterations(
    family: TaskFamily,
    config: TrainConfig,
    methods: Sequence[str],
    state: ModelState,
    *,
    steps: int,
    repeats: int,
    task_seed: int | Sequence[int],
) -> list[Timing]:
    """Time ``repeats`` meta-iterations of each of ``methods`` from ``state`` on one meta-batch.

    Each method first runs one warm-up iteration, which also measures the saved-tensor peak.
    The timed repetitions then go round-robin over the methods, so that a change in the load of
    the machine affects all of them alike. Each repetition restores the model to ``state`` and
    draws the same tasks (untimed), then times ``zero_grad``, ``meta_backward`` and the outer
    step. Sampling inside the losses (RL trajectories) is part of the time.
    """
    timed = [_Timed(family, config, m, state, steps, task_seed) for m in methods]
    peaks = []
    for t in timed:
        tasks = t.reset()
        with SavedTensorMeter() as meter:
            t.iteration(tasks)
        peaks.append(meter.peak_bytes)
    times: list[list[float]] = [[] for _ in timed]
    for _ in range(repeats):
        for t, record in zip(timed, times, strict=True):
            record.append(t.iteration(t.reset()))
    out = []
    for method, record, peak in zip(methods, times, peaks, strict=True):
        q1, median, q3 = np.percentile(record, [25, 50, 75])
        out.append(
            Timing(method, steps, float(median), float(q1), float(q3), min(record), repeats, peak)
        )
    return out


# -- learning curves -----------------------------------------------------------------------------


def heldout_query_loss(algo: MetaLearner, tasks: Sequence[Task]) -> float:
    """Mean query loss after ``algo.adapt`` (``inner_steps`` steps) over ``tasks``."""
    total = 0.0
    for task in tasks:
        with algo.adapt(task) as model, torch.no_grad():
            total += float(task.query_loss(model))
    return total / len(tasks)


def _heldout_evaluation(
    family: TaskFamily, algo: MetaLearner, config: TrainConfig, num_tasks: int
) -> dict[str, float]:
    """The family's periodic evaluation plus the domain-free held-out query loss."""
    values = dict(family.periodic_eval(algo, config))
    with torch.random.fork_rng(devices=[]):
        tasks = _draw(family, config, [_HELDOUT_STREAM, config.eval_seed], num_tasks)
        values[HELDOUT_KEY] = heldout_query_loss(algo, tasks)
    return values


class _Observer(TrainingHooks):
    """Watches a ``metaopt train`` run: keeps θ at the iterations in ``snapshot_at`` and adds the
    held-out query loss to each periodic evaluation.

    The run stays an ordinary ``metaopt train`` run (same tasks, same numbers; its directory works
    with ``metaopt eval``), and the loop keeps this hook's time out of the run's clock.
    """

    def __init__(self, family: TaskFamily, snapshot_at: set[int], heldout_tasks: int) -> None:
        self.family = family
        self.snapshot_at = snapshot_at
        self.heldout_tasks = heldout_tasks
        self.snapshots: dict[int, ModelState] = {}
        self.evaluated: list[int] = []

    def _snapshot(self, completed: int, algo: MetaLearner) -> None:
        if completed in self.snapshot_at:
            self.snapshots[completed] = _state(algo.model)

    def on_iteration_start(self, iteration: int, algo: MetaLearner) -> None:
        self._snapshot(iteration - 1, algo)

    def on_evaluation(
        self, iteration: int, algo: MetaLearner, config: TrainConfig
    ) -> dict[str, float]:
        self.evaluated.append(iteration)
        with torch.random.fork_rng(devices=[]):
            tasks = _draw(
                self.family, config, [_HELDOUT_STREAM, config.eval_seed], self.heldout_tasks
            )
            return {HELDOUT_KEY: heldout_query_loss(algo, tasks)}

    def on_train_end(self, algo: MetaLearner, config: TrainConfig) -> None:
        self._snapshot(config.iterations, algo)


def _run_curve(
    family: TaskFamily,
    config: TrainConfig,
    method: str,
    run_dir: Path,
    *,
    every: int,
    heldout_tasks: int,
    snapshot_at: set[int],
    initial: ModelState,
    progress: bool | None,
) -> tuple[dict[str, Any], dict[int, ModelState]]:
    """One ``metaopt train`` run of ``method``; its learning curve and the snapshots asked for."""
    config = dataclasses.replace(method_config(config, method), eval_every=every, out=str(run_dir))
    _, start_algo = _algorithm(family, config, method, config.inner_steps, initial)
    points = [
        {
            "iteration": 0,
            "train_seconds": 0.0,
            **_heldout_evaluation(family, start_algo, config, heldout_tasks),
        }
    ]
    observer = _Observer(family, snapshot_at, heldout_tasks)
    train(family, config, progress=progress, hooks=[observer])
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    evaluated = set(observer.evaluated)
    keys = [key for key in points[0] if key not in ("iteration", "train_seconds")]
    for row in rows:
        if row["iteration"] in evaluated:
            points.append(
                {
                    "iteration": row["iteration"],
                    "train_seconds": row["seconds"],
                    **{key: row.get(key) for key in keys},
                }
            )
    evaluation = json.loads((run_dir / "eval.json").read_text())
    trained = str(config.inner_steps)
    final = {
        "metric": evaluation.get("metric"),
        "tasks": evaluation.get("tasks"),
        "by_steps": evaluation.get("by_steps", {}),
        "at_trained_steps": evaluation.get("by_steps", {}).get(trained),
    }
    total = rows[-1]["seconds"] if rows else 0.0
    curve = {
        "run_dir": str(run_dir),
        "iterations": config.iterations,
        "train_seconds": round(total, 4),
        "points": points,
        "final_eval": final,
    }
    return curve, observer.snapshots


def family_curve_key(keys: Sequence[str], metric: str) -> str | None:
    """The family's post-adaptation number among its periodic-evaluation keys, if it names one.

    A key that contains the family's metric name and ``after`` or ``post`` (``val_mse_after``,
    ``test_post_return``), and is not a confidence interval or a difference.
    """
    for key in keys:
        if metric in key and ("after" in key or "post" in key):
            if "ci95" not in key and "minus" not in key and key != HELDOUT_KEY:
                return key
    return None


# -- the whole comparison ------------------------------------------------------------------------


def checkpoint_iterations(iterations: int, checkpoints: int) -> list[int]:
    """``checkpoints`` evenly spaced iterations of ``1 … iterations``, ending at the last one."""
    if iterations < 1 or checkpoints < 1:
        return []
    return sorted({max(1, round(iterations * j / checkpoints)) for j in range(1, checkpoints + 1)})


def _prepare_report_dir(family: TaskFamily, report_dir: Path | str | None) -> Path:
    if report_dir is None:
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        report_dir = Path("reports") / f"compare-{family.name}-{stamp}"
    return new_directory(
        Path(report_dir),
        "--report",
        "choose a new directory (metaopt never overwrites a saved report)",
    )


def _bar(total: int, desc: str, progress: bool | None) -> tqdm:
    return tqdm(total=total, desc=desc, disable=None if progress is None else not progress)


def compare(
    family: TaskFamily,
    config: TrainConfig,
    report_dir: Path | str | None = None,
    options: CompareOptions | None = None,
    *,
    progress: bool | None = None,
) -> dict[str, Any]:
    """Compare the meta-gradients, costs and learning curves of the algorithms on ``family``.

    Writes ``report.md``, ``results.json``, ``gradients.csv``, ``timing.csv``, ``curves.csv``,
    ``cosine_vs_steps.png``, ``curves_iterations.png``, ``curves_time.png`` and ``config.json``
    into ``report_dir``, and the runs into ``report_dir/runs/<method>``.

    Args:
        family: The task family.
        config: Its validated config; ``algo`` is ignored, ``inner_steps`` is the trained number
            of steps of the runs, ``iterations`` their length, ``meta_batch`` the comparison's.
        report_dir: A new or empty directory (default ``reports/compare-<family>-<time>``).
        options: What to measure (default :class:`CompareOptions`).
        progress: Show progress bars; ``None`` shows them only when stderr is a terminal.

    Returns:
        What ``results.json`` holds.

    Raises:
        ConfigError: for out-of-range options or a non-empty report directory.
    """
    options = options or CompareOptions()
    options.validate()
    config.validate()
    family.validate(config)
    report = _prepare_report_dir(family, report_dir)
    methods = options.all_methods
    initial = initial_state(family, config)
    seed: int | list[int] = config.seed
    checkpoints = checkpoint_iterations(config.iterations, options.checkpoints)
    every = options.curve_every or max(1, config.iterations // 20)

    # 1. The second-order run, whose snapshots are the later comparison points.
    curves: dict[str, Any] = {}
    states: dict[int, ModelState] = {0: initial}
    runs = report / "runs"
    if config.iterations > 0 and (checkpoints or options.curves):
        curves[REFERENCE], snapshots = _run_curve(
            family,
            config,
            REFERENCE,
            runs / REFERENCE,
            every=every,
            heldout_tasks=options.heldout_tasks,
            snapshot_at=set(checkpoints),
            initial=initial,
            progress=progress,
        )
        states.update(snapshots)

    # 2. Meta-gradients at each point, for each number of inner steps, on each meta-batch.
    gradients: list[dict[str, Any]] = []
    seeds = comparison_seeds(config, options.batches)
    others = [m for m in methods if m != REFERENCE]
    with _bar(len(states) * len(options.steps), "meta-gradients", progress) as bar:
        for iteration, state in sorted(states.items()):
            for steps in options.steps:
                at = (family, config, state, steps)
                references = _on_batches(*at, REFERENCE, seeds)
                point = {"iteration": iteration, "steps": steps}
                for method in others:
                    found = _on_batches(*at, method, seeds)
                    gradients.append(
                        {"method": method, **point, **summarize_batches(references, found)}
                    )
                # Second-order MAML on another meta-batch: batch b against batch b + 1.
                if len(seeds) > 1:
                    shifted = references[1:] + references[:1]
                else:
                    shifted = _on_batches(*at, REFERENCE, [[_OTHER_BATCH_STREAM, config.seed]])
                gradients.append(
                    {"method": OTHER_BATCH, **point, **summarize_batches(references, shifted)}
                )
                bar.update()

    # 2b. Against the exact meta-gradient, where the family can compute one.
    truth = None
    if options.truth_batches:
        rows = 3 * len([m for m in methods if m != "reptile"])
        with _bar(rows, "against the truth", progress) as bar:
            truth = family.compare_with_truth(config, methods, options.truth_batches, bar.update)

    # 3. Time and memory per meta-iteration, at initialisation.
    timing: list[Timing] = []
    with _bar(len(options.steps), "timing", progress) as bar:
        for steps in options.steps:
            timing += time_meta_iterations(
                family,
                config,
                methods,
                initial,
                steps=steps,
                repeats=options.repeats,
                task_seed=seed,
            )
            bar.update()

    # 4. Learning curves of the other methods.
    if options.curves and config.iterations > 0:
        for method in methods:
            if method != REFERENCE:
                curves[method], _ = _run_curve(
                    family,
                    config,
                    method,
                    runs / method,
                    every=every,
                    heldout_tasks=options.heldout_tasks,
                    snapshot_at=set(),
                    initial=initial,
                    progress=progress,
                )

    point_keys = [k for c in curves.values() for p in c["points"] for k in p]
    results: dict[str, Any] = {
        "family": family.name,
        "report_dir": str(report),
        "metric": family.metric,
        "config": config.to_dict(),
        "options": dataclasses.asdict(options),
        "methods": list(methods),
        "points": sorted(states),
        "curve_every": every,
        "family_curve_key": family_curve_key(list(dict.fromkeys(point_keys)), family.metric),
        "threads": torch.get_num_threads(),
        "machine": platform.machine(),
        "versions": package_versions(),
        "command": sys.argv,
        "gradients": gradients,
        "timing": [dataclasses.asdict(t) for t in timing],
        "curves": curves,
        "truth": truth,
    }
    results["interpretation"] = interpret(results)
    _write_outputs(report, results)
    return results


# -- reading the numbers -------------------------------------------------------------------------


def _fmt(value: float | None, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return f"{value:.{digits}g}" if abs(value) < 1e4 else f"{value:.3e}"


def _cos(value: float | None) -> str:
    if value is None or not math.isfinite(value):
        return "n/a"
    return f"{value:.4f}"


def _point(iteration: int) -> str:
    return "init" if iteration == 0 else f"it {iteration}"


def _rows(
    results: Mapping[str, Any], method: str, iteration: int | None = None
) -> list[Mapping[str, Any]]:
    return [
        r
        for r in results["gradients"]
        if r["method"] == method and (iteration is None or r["iteration"] == iteration)
    ]


def interpret(results: Mapping[str, Any]) -> list[str]:
    """One line per comparison, stating what was measured (no judgement)."""
    lines = []
    config = results["config"]
    steps = results["options"]["steps"]
    points = results["points"]
    batches = results["options"]["batches"]
    batch = f"mean over {batches} meta-batch{'es' * (batches > 1)} of {config['meta_batch']} tasks"
    for method in [m for m in results["methods"] if m != REFERENCE] + [OTHER_BATCH]:
        parts = []
        for iteration in points:
            rows = _rows(results, method, iteration)
            cos = ", ".join(_cos(r["cosine"]) for r in rows)
            ratio = ", ".join(_fmt(r["norm_ratio"]) for r in rows)
            parts.append(f"{_point(iteration)}: cosine {cos}; norm ratio {ratio}")
        what = (
            "second-order MAML on an independent meta-batch vs second-order MAML"
            if method == OTHER_BATCH
            else f"{LABELS[method]} vs second-order MAML"
        )
        line = f"Gradients, {what} ({batch}), at {'/'.join(map(str, steps))} inner steps — "
        line += " | ".join(parts) + "."
        if method == "reptile":
            line += " Reptile's norm is of θ − θ̃ (parameter units), not of a loss gradient."
        if method == "metasgd":
            norms = ", ".join(_fmt(r["rates_grad_norm"]) for r in _rows(results, method, 0))
            line += f" Its rates start at inner_lr; their meta-gradient norm at init: {norms}."
        bad = [r for r in _rows(results, method) if r["nonfinite_reference"] or r["nonfinite"]]
        if bad:
            other = "the other batch" if method == OTHER_BATCH else LABELS[method]
            line += (
                " Non-finite meta-gradients, left out: "
                + "; ".join(
                    f"{_point(r['iteration'])}, {r['steps']} steps: MAML on "
                    f"{r['nonfinite_reference']}, {other} on {r['nonfinite']} of {batches}"
                    for r in bad
                )
                + "."
            )
        lines.append(line)
    timing = results["timing"]
    by = {(t["method"], t["steps"]): t for t in timing}
    for method in [m for m in results["methods"] if m != REFERENCE]:
        time_ratio = ", ".join(
            _fmt(by[(method, s)]["min_s"] / by[(REFERENCE, s)]["min_s"], 2) for s in steps
        )
        memory_ratio = ", ".join(
            _fmt(
                _safe_div(
                    by[(method, s)]["saved_peak_bytes"], by[(REFERENCE, s)]["saved_peak_bytes"]
                ),
                2,
            )
            for s in steps
        )
        lines.append(
            f"Cost, {LABELS[method]} relative to second-order MAML at "
            f"{'/'.join(map(str, steps))} inner steps: wall time per meta-iteration (fastest of "
            f"{results['options']['repeats']}) ×{time_ratio}; peak saved-tensor bytes "
            f"×{memory_ratio} ({results['threads']} torch thread(s))."
        )
    curves = results["curves"]
    if curves:
        key = results.get("family_curve_key")
        finals = []
        for method, curve in curves.items():
            last = curve["points"][-1]
            text = f"{LABELS[method]} {_fmt(last.get(HELDOUT_KEY), 4)}"
            if key and key in last:
                text += f" ({key} {_fmt(last[key], 4)})"
            text += f" after {_fmt(curve['train_seconds'], 3)} s"
            finals.append(text)
        iterations = max(c["iterations"] for c in curves.values())
        lines.append(
            f"Learning curves, {iterations} iterations from seed {config['seed']}, same outer "
            f"optimiser ({config['outer_optimizer']}, lr {config['outer_lr']}) for every method: "
            f"held-out post-adaptation query loss on {results['options']['heldout_tasks']} tasks "
            f"at the last point — " + "; ".join(finals) + " of training."
        )
    return lines


def _bytes(count: int) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if count >= size:
            return f"{count / size:.2f} {unit}"
    return f"{count} B"


def _agreement_cell(row: Mapping[str, Any], batches: int) -> str:
    """``cosine ± sd (×ratio)``, and how many meta-batches gave a non-finite meta-gradient."""
    excluded = max(row["nonfinite_reference"], row["nonfinite"])
    if row["cosine"] is None:
        return f"non-finite ({excluded}/{batches})"
    cell = f"{_cos(row['cosine'])} ± {row['cosine_sd']:.2f} (×{_fmt(row['norm_ratio'])})"
    return cell + (f" [{excluded}/{batches} non-finite]" if excluded else "")


def _safe_div(a: float, b: float) -> float:
    return a / b if b else math.nan


def render_report(results: Mapping[str, Any]) -> str:
    """The Markdown report of a :func:`compare` result."""
    config = results["config"]
    steps = results["options"]["steps"]
    methods = results["methods"]
    out = [f"# metaopt compare: {results['family']}", ""]
    out.append(
        f"Meta-batch {config['meta_batch']}, inner lr {config['inner_lr']} "
        f"({config['inner_optimizer']}), outer {config['outer_optimizer']} at {config['outer_lr']}, "
        f"seed {config['seed']}; runs of {config['iterations']} iterations with "
        f"{config['inner_steps']} inner step(s); engine {config.get('engine', 'loop')}; "
        f"{results['threads']} torch thread(s); torch {results['versions'].get('torch')}."
    )
    out += ["", "## What was measured", ""]
    out += [f"- {line}" for line in results["interpretation"]]

    out += ["", "## Meta-gradient agreement with second-order MAML", ""]
    out.append(
        "Cosine similarity over all of θ (mean ± standard deviation over "
        f"{results['options']['batches']} independent meta-batches of {config['meta_batch']} "
        "tasks), and the mean norm ratio ‖g‖/‖g_MAML‖ in parentheses, for each number of inner "
        "steps. Same tasks and same parameters for every method on each meta-batch; *MAML, other "
        "batch* compares second-order MAML on one meta-batch with second-order MAML on the next "
        "(the meta-batch sampling noise)."
    )
    out.append("")
    header = "| point | method | " + " | ".join(f"{s} step{'s' * (s > 1)}" for s in steps) + " |"
    out += [header, "|" + " --- |" * (2 + len(steps))]
    for iteration in results["points"]:
        for method in [m for m in methods if m != REFERENCE] + [OTHER_BATCH]:
            cells = [
                _agreement_cell(r, results["options"]["batches"])
                for r in _rows(results, method, iteration)
            ]
            out.append(f"| {_point(iteration)} | {LABELS[method]} | " + " | ".join(cells) + " |")

    layers = list(results["gradients"][0]["layers"]) if results["gradients"] else []
    if layers:
        out += ["", "### Per layer", ""]
        out.append("Cosine (norm ratio) of each module's parameters, means over the meta-batches.")
        out.append("")
        out += [
            "| point | steps | method | " + " | ".join(f"`{n}`" for n in layers) + " |",
            "|" + " --- |" * (3 + len(layers)),
        ]
        for r in results["gradients"]:
            cells = [
                f"{_cos(r['layers'][n]['cosine'])} (×{_fmt(r['layers'][n]['norm_ratio'])})"
                for n in layers
            ]
            out.append(
                f"| {_point(r['iteration'])} | {r['steps']} | {LABELS[r['method']]} | "
                + " | ".join(cells)
                + " |"
            )

    out += ["", "## Cost per meta-iteration", ""]
    out.append(
        f"Wall time of `zero_grad` + `meta_backward` + outer step at initialisation: fastest of "
        f"{results['options']['repeats']} repetitions after a warm-up, then the median and "
        f"interquartile range in brackets; repetitions go round-robin over the methods; "
        f"{results['threads']} torch thread(s). Then the peak of the bytes autograd keeps saved "
        "for backward during one meta-iteration."
    )
    out.append("")
    head = "| method | " + " | ".join(f"{s} step{'s' * (s > 1)}" for s in steps) + " |"
    rule = "|" + " --- |" * (1 + len(steps))
    by = {(t["method"], t["steps"]): t for t in results["timing"]}
    out += [head.replace("| method |", "| wall time |"), rule]
    for method in methods:
        cells = []
        for s in steps:
            t = by[(method, s)]
            cells.append(
                f"{t['min_s'] * 1e3:.1f} ms ({t['median_s'] * 1e3:.1f} "
                f"[{t['q1_s'] * 1e3:.1f}–{t['q3_s'] * 1e3:.1f}])"
            )
        out.append(f"| {LABELS[method]} | " + " | ".join(cells) + " |")
    out += ["", head.replace("| method |", "| saved tensors, peak |"), rule]
    for method in methods:
        cells = [_bytes(by[(method, s)]["saved_peak_bytes"]) for s in steps]
        out.append(f"| {LABELS[method]} | " + " | ".join(cells) + " |")

    curves = results["curves"]
    if curves:
        key = results.get("family_curve_key")
        out += ["", "## Learning curves", ""]
        out.append(
            f"Full `metaopt train` runs from the same seed (directories under `runs/`); every "
            f"{results['curve_every']} iterations the held-out post-adaptation query loss on "
            f"{results['options']['heldout_tasks']} tasks"
            + (f" and the family's `{key}`" if key else "")
            + ". Training seconds exclude the evaluations. Final evaluation: the family's "
            "`eval.json`, at the trained number of inner steps."
        )
        out.append("")
        columns = ["method", "iterations", "training seconds", "held-out query loss"]
        if key:
            columns.append(key)
        columns.append("final eval (mean ± 95% CI)")
        out += ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
        for method, curve in curves.items():
            last = curve["points"][-1]
            final = curve["final_eval"].get("at_trained_steps") or {}
            cells = [
                LABELS[method],
                str(curve["iterations"]),
                f"{curve['train_seconds']:.1f}",
                _fmt(last.get(HELDOUT_KEY), 4),
            ]
            if key:
                cells.append(_fmt(last.get(key), 4))
            metric = curve["final_eval"].get("metric") or ""
            if "mean" in final:
                cells.append(f"{metric} {_fmt(final['mean'], 4)} ± {_fmt(final.get('ci95'), 2)}")
            else:
                cells.append("n/a")
            out.append("| " + " | ".join(cells) + " |")

    truth = results.get("truth")
    if truth:
        out += _truth_section(truth)

    out += ["", "## Files", ""]
    out.append(
        "`results.json` (everything above), `gradients.csv`, `timing.csv`, `curves.csv`, "
        "`cosine_vs_steps.png`"
        + (", `curves_iterations.png`, `curves_time.png`, `runs/<method>/`" if curves else "")
        + ", `config.json`."
    )
    return "\n".join(out) + "\n"


def _truth_section(truth: Mapping[str, Any]) -> list[str]:
    setting = truth["setting"]
    out = ["", "## Against the exact meta-gradient", ""]
    out.append(
        f"On a tiny MDP where the meta-objective M(θ) = E_τ[J(U(θ, τ))] is an exact sum "
        f"({setting['num_states']} states, {setting['num_actions']} actions, horizon "
        f"{setting['horizon']}, {setting['trajectories']} support episode(s) per inner step, "
        f"deterministic rewards, a tabular policy; inner lr {setting['inner_lr']}, "
        f"{setting['inner_steps']} step(s)), each estimator's mean over {setting['samples']} "
        f"samples ({setting['batches']} batches of {setting['copies']}) against ∇M, over the "
        "policy's parameters. The noise column is the standard error of the mean, relative to "
        "‖∇M‖: a relative error near it is noise. |z|max is the largest deviation in standard "
        "errors: an unbiased estimator stays within about 3.5. The variance is per sample, summed "
        "over the coordinates, in units of ‖∇M‖²."
    )
    out += [
        "",
        "| method | estimator | cosine | relative error | noise | max abs z | variance |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in truth["rows"]:
        out.append(
            f"| {LABELS.get(row['method'], row['method'])} | {row['estimator']} | "
            f"{_fmt(row['cosine'], 4)} | {_fmt(row['relative_error'], 3)} | "
            f"{_fmt(row['noise'], 3)} | {_fmt(row['max_abs_z'], 1)} | {_fmt(row['variance'], 3)} |"
        )
    for method, why in truth.get("not_applicable", {}).items():
        out += ["", f"{LABELS.get(method, method)}: {why}."]
    return out


# -- files ---------------------------------------------------------------------------------------


def _json_ready(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_ready(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_ready(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def _write_csv(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    columns = list(dict.fromkeys(k for row in rows for k in row))
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow(row)


def _gradient_csv_rows(results: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    for r in results["gradients"]:
        common = {"iteration": r["iteration"], "steps": r["steps"], "method": r["method"]}
        yield {
            **common,
            "layer": "all",
            "cosine": r["cosine"],
            "norm_ratio": r["norm_ratio"],
            "norm": r["norm"],
            "reference_norm": r["reference_norm"],
            "rates_grad_norm": r["rates_grad_norm"],
        }
        for layer, values in r["layers"].items():
            yield {**common, "layer": layer, **values}


def _write_outputs(report: Path, results: dict[str, Any]) -> None:
    ready = _json_ready(results)
    (report / "results.json").write_text(json.dumps(ready, indent=2) + "\n")
    (report / "config.json").write_text(
        json.dumps(
            {
                key: ready[key]
                for key in ("family", "config", "options", "threads", "versions", "command")
            },
            indent=2,
        )
        + "\n"
    )
    _write_csv(report / "gradients.csv", list(_gradient_csv_rows(results)))
    _write_csv(report / "timing.csv", results["timing"])
    curve_rows = [
        {"method": method, **point}
        for method, curve in results["curves"].items()
        for point in curve["points"]
    ]
    if curve_rows:
        _write_csv(report / "curves.csv", curve_rows)
    (report / "report.md").write_text(render_report(results))
    plot_cosines(report / "cosine_vs_steps.png", results)
    if results["curves"]:
        plot_curves(report, results)


def plot_cosines(path: Path, results: Mapping[str, Any]) -> Path:
    """Cosine and norm ratio against inner steps, one colour per method, one style per point."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.ticker import NullFormatter, NullLocator

    fig, (ax_cos, ax_ratio) = plt.subplots(1, 2, figsize=(11, 4.6))
    styles: list[Any] = ["-", "--", "-.", ":"]
    points = results["points"]
    methods = [m for m in results["methods"] if m != REFERENCE] + [OTHER_BATCH]
    for method in methods:
        for p_index, iteration in enumerate(points):
            rows = _rows(results, method, iteration)
            xs = [r["steps"] for r in rows]
            look: dict[str, Any] = {
                "linestyle": styles[p_index % len(styles)],
                "marker": "o",
                "color": COLORS[method],
                "alpha": max(0.35, 1.0 - 0.2 * p_index),
            }
            ax_cos.plot(xs, [r["cosine"] for r in rows], **look)
            ax_ratio.plot(xs, [r["norm_ratio"] for r in rows], **look)
    for ax, ylabel in ((ax_cos, "cosine with second-order MAML"), (ax_ratio, "‖g‖ / ‖g_MAML‖")):
        ax.set_xscale("log")
        ax.xaxis.set_minor_locator(NullLocator())
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xticks(results["options"]["steps"], [str(s) for s in results["options"]["steps"]])
        ax.set_xlabel("inner steps")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    ax_ratio.set_yscale("log")
    ax_cos.axhline(1.0, color="k", lw=0.5)
    handles = [Line2D([], [], color=COLORS[m], marker="o", label=LABELS[m]) for m in methods]
    handles += [
        Line2D([], [], color="k", linestyle=styles[i % len(styles)], label=_point(iteration))
        for i, iteration in enumerate(points)
    ]
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 8), fontsize=8)
    fig.suptitle(f"{results['family']}: meta-gradients against second-order MAML")
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_curves(report: Path, results: Mapping[str, Any]) -> list[Path]:
    """Held-out curves against iterations and against training seconds (two PNG files)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    key = results.get("family_curve_key")
    keys = ([key] if key else []) + [HELDOUT_KEY]  # the family's own number first
    paths = []
    for x_key, name, xlabel in (
        ("iteration", "curves_iterations.png", "meta-iteration"),
        ("train_seconds", "curves_time.png", "training wall-clock seconds"),
    ):
        fig, axes = plt.subplots(1, len(keys), figsize=(5.5 * len(keys), 4.0), squeeze=False)
        for ax, y_key in zip(axes[0], keys, strict=True):
            for method in results["methods"]:
                curve = results["curves"].get(method)
                if curve is None:
                    continue
                points = [p for p in curve["points"] if p.get(y_key) is not None]
                ax.plot(
                    [p[x_key] for p in points],
                    [p[y_key] for p in points],
                    marker=".",
                    color=COLORS[method],
                    label=LABELS[method],
                )
            values = [
                abs(p[y_key])
                for c in results["curves"].values()
                for p in c["points"]
                if p.get(y_key)
            ]
            if values and max(values) > 100 * max(min(values), 1e-12):
                ax.set_yscale("symlog", linthresh=max(min(values), 1e-3))  # spans decades
            ax.set_xlabel(xlabel)
            ax.set_ylabel(y_key.replace("_", " "))
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        fig.suptitle(f"{results['family']}: held-out, after adaptation")
        fig.tight_layout()
        path = report / name
        fig.savefig(path, dpi=120)
        plt.close(fig)
        paths.append(path)
    return paths


def parse_methods(text: str) -> tuple[str, ...]:
    """``"fomaml,reptile"`` -> ``("fomaml", "reptile")`` (validated by :class:`CompareOptions`)."""
    return tuple(part.strip() for part in text.split(",") if part.strip())


# -- the command ---------------------------------------------------------------------------------

#: Keys of the parsed command line that are compare's own, not config fields.
_OWN = (
    "report",
    "methods",
    "compare_steps",
    "checkpoints",
    "repeats",
    "curve_every",
    "heldout_tasks",
    "batches",
    "truth_batches",
    "no_curves",
    "threads",
    "quiet",
)


def _int_list(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from None


def add_compare_arguments(parser: argparse.ArgumentParser) -> None:
    """``metaopt compare FAMILY``'s own flags (the family's config flags are added separately)."""
    defaults = CompareOptions()
    parser.add_argument(
        "--report",
        default=None,
        metavar="DIR",
        help="report directory, new or empty (default: reports/compare-<family>-<time>)",
    )
    parser.add_argument(
        "--methods",
        type=parse_methods,
        default=defaults.methods,
        metavar="LIST",
        help="algorithms compared with second-order MAML, always included "
        f"(default: {','.join(defaults.methods)})",
    )
    parser.add_argument(
        "--steps",
        dest="compare_steps",
        type=_int_list,
        default=defaults.steps,
        metavar="LIST",
        help="inner-step counts of the gradient and cost comparisons "
        f"(default: {','.join(map(str, defaults.steps))}); --inner-steps sets the runs'",
    )
    parser.add_argument(
        "--checkpoints",
        type=int,
        default=defaults.checkpoints,
        metavar="N",
        help="points of the second-order run (evenly spaced over --iterations) at which the "
        f"gradients are compared again; 0: at initialisation only (default: {defaults.checkpoints})",
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=defaults.repeats,
        metavar="N",
        help=f"timed meta-iterations per method and step count (default: {defaults.repeats})",
    )
    parser.add_argument(
        "--curve-every",
        type=int,
        default=defaults.curve_every,
        metavar="N",
        help="held-out evaluation every N iterations of the runs (default: 0, about 20 points)",
    )
    parser.add_argument(
        "--heldout-tasks",
        type=int,
        default=defaults.heldout_tasks,
        metavar="N",
        help=f"tasks of the held-out query loss (default: {defaults.heldout_tasks})",
    )
    parser.add_argument(
        "--batches",
        type=int,
        default=defaults.batches,
        metavar="N",
        help="independent meta-batches the gradient comparison is averaged over "
        f"(default: {defaults.batches})",
    )
    parser.add_argument(
        "--truth-batches",
        type=int,
        default=defaults.truth_batches,
        metavar="N",
        help="batches of the comparison with the exact meta-gradient, where the family has one "
        f"(mdp); 0 skips it (default: {defaults.truth_batches})",
    )
    parser.add_argument(
        "--no-curves",
        action="store_true",
        help="skip the other methods' full runs (the second-order run still gives checkpoints)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        metavar="N",
        help="torch threads for the whole comparison (default: torch's); stated in the report",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def run_compare_command(family: TaskFamily, arguments: Mapping[str, Any]) -> int:
    """``metaopt compare``: resolve the config, compare, print the report; the exit status.

    Raises:
        ConfigError: for ``--algo`` or ``--out`` (compare runs every method into the report)
            and for any out-of-range value.
    """
    from metaopt.training.config import resolve_config

    for name, option, instead in (("algo", "--algo", "--methods"), ("out", "--out", "--report")):
        if name in arguments:
            raise ConfigError(f"{option} does not apply to metaopt compare; use {instead}")
    overrides = {k: v for k, v in arguments.items() if k not in (*_OWN, "command", "family")}
    config = resolve_config(family, overrides)
    options = CompareOptions(
        methods=tuple(arguments["methods"]),
        steps=tuple(arguments["compare_steps"]),
        checkpoints=arguments["checkpoints"],
        repeats=arguments["repeats"],
        curves=not arguments["no_curves"],
        curve_every=arguments["curve_every"],
        heldout_tasks=arguments["heldout_tasks"],
        batches=arguments["batches"],
        truth_batches=arguments["truth_batches"],
    )
    options.validate()
    if arguments["threads"] is not None:
        if arguments["threads"] < 1:
            raise ConfigError(f"--threads must be an integer >= 1, got {arguments['threads']}")
        torch.set_num_threads(arguments["threads"])
    results = compare(
        family, config, arguments["report"], options, progress=False if arguments["quiet"] else None
    )
    report = Path(results["report_dir"])
    print((report / "report.md").read_text())
    print(f"report directory: {report}")
    return 0
