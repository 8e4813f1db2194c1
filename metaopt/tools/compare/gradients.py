"""The meta-gradients of the methods on one meta-batch, and how they agree with second-order
MAML's: cosine and norm ratio, over all of θ and per layer, averaged over meta-batches.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn

from metaopt.algorithms import MetaLearner
from metaopt.registry import algorithm
from metaopt.task import Task
from metaopt.tools.compare.options import BATCH_STREAM, ModelState
from metaopt.training import (
    TaskFamily,
    TrainConfig,
    autocast,
    build_algorithm,
    run_device,
)

__all__ = [
    "GradientAgreement",
    "MetaGradient",
    "agreement",
    "comparison_seeds",
    "cosine",
    "draw_tasks",
    "initial_state",
    "layer_of",
    "meta_gradient",
    "meta_gradients_on",
    "method_algorithm",
    "method_config",
    "model_state",
    "summarize_batches",
]


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
class GradientAgreement:
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
) -> GradientAgreement:
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
    return GradientAgreement(
        cosine=cosine(oth, ref),
        norm_ratio=_ratio(oth, ref),
        norm=float(oth.norm()),
        reference_norm=float(ref.norm()),
        layers=layers,
    )


def meta_gradients_on(
    family: TaskFamily,
    config: TrainConfig,
    state: ModelState,
    steps: int,
    method: str,
    seeds: Sequence[Sequence[int]],
    *,
    first_order: bool = False,
) -> list[MetaGradient]:
    """``method``'s `meta_gradient` on each of the meta-batches ``seeds`` draw."""
    return [
        meta_gradient(
            family, config, method, state, steps=steps, task_seed=seed, first_order=first_order
        )
        for seed in seeds
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
    return [[BATCH_STREAM, config.seed, b] for b in range(batches)]


# -- measuring one method ------------------------------------------------------------------------


def model_state(model: nn.Module) -> ModelState:
    """A detached copy of ``model.state_dict()``: a point at which the methods are compared."""
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def initial_state(family: TaskFamily, config: TrainConfig) -> ModelState:
    """The model's state at initialisation, as ``metaopt train`` builds it (seeded by config.seed).

    The global torch RNG is left as it was.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        return model_state(family.make_model(config))


def method_config(config: TrainConfig, method: str) -> TrainConfig:
    """``config`` for ``method``, with its own options alone (those ``config.algo_options`` holds
    for it, else its defaults); an inner optimiser it does not take (Meta-SGD's update is SGD with
    its learned rates) replaced by the first it does."""
    allowed = algorithm(method).inner_optimizers
    optimizer = config.inner_optimizer if config.inner_optimizer in allowed else allowed[0]
    options = {method: config.algo_options.get(method, {})}
    return dataclasses.replace(config, algo=method, inner_optimizer=optimizer, algo_options=options)


def method_algorithm(
    family: TaskFamily,
    config: TrainConfig,
    method: str,
    steps: int,
    state: ModelState,
    *,
    first_order: bool = False,
) -> tuple[TrainConfig, MetaLearner]:
    """``method`` with ``steps`` inner steps around a fresh model loaded with ``state``;
    ``first_order``: its first-order variant (Meta-SGD's, which ``--algo`` does not name)."""
    config = dataclasses.replace(method_config(config, method), inner_steps=steps)
    # The first-order variant: an option of the algorithm's (a plug-in's), else MAML's flag.
    as_option = first_order and "first_order" in algorithm(method).option_names()
    if as_option:
        options = {method: {**config.algo_options[method], "first_order": True}}
        config = dataclasses.replace(config, algo_options=options)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model = family.make_model(config)
    model.load_state_dict(state)
    algo = build_algorithm(config, model)
    if first_order and not as_option:
        if not hasattr(algo, "first_order"):
            raise ValueError(f"{method} has no first-order variant")
        algo.first_order = True  # MAML's flag, read at each meta_backward
    return config, algo


def draw_tasks(
    family: TaskFamily, config: TrainConfig, seed: int | Sequence[int], num_tasks: int
) -> Sequence[Task]:
    """``num_tasks`` tasks from a fresh ``default_rng(seed)``: identical for every caller."""
    return family.sample_tasks(config, np.random.default_rng(seed), num_tasks)


class MetaGradient(NamedTuple):
    """One method's meta-gradient on one meta-batch.

    Attributes:
        theta: Gradient of each trainable model parameter, by name.
        rates_norm: An algorithm that learns rates (Meta-SGD): the norm of their gradient;
            otherwise ``None``.
        rates: The gradient of its learned rates, by parameter name; otherwise ``None``.
        query: Mean query loss of the meta-batch after adaptation.
        finite: Whether every entry of ``theta`` is finite.
    """

    theta: dict[str, torch.Tensor]
    rates_norm: float | None
    query: float
    finite: bool
    rates: dict[str, torch.Tensor] | None = None

    def of_rates(self) -> MetaGradient:
        """This meta-gradient with the rates' gradient in place of θ's (to compare rates)."""
        if self.rates is None:
            raise ValueError("this method learns no rates")
        finite = all(bool(torch.isfinite(g).all()) for g in self.rates.values())
        return MetaGradient(self.rates, self.rates_norm, self.query, finite)


def meta_gradient(
    family: TaskFamily,
    config: TrainConfig,
    method: str,
    state: ModelState,
    *,
    steps: int,
    task_seed: int | Sequence[int],
    first_order: bool = False,
) -> MetaGradient:
    """``method``'s meta-gradient at ``state`` with ``steps`` inner steps (its first-order
    variant with ``first_order``).

    The meta-batch (``config.meta_batch`` tasks) is drawn from ``default_rng(task_seed)``, afresh
    for each call, so every method sees identical tasks in identical generator states.
    """
    config, algo = method_algorithm(family, config, method, steps, state, first_order=first_order)
    tasks = draw_tasks(family, config, task_seed, config.meta_batch)
    for p in algo.meta_parameters():
        p.grad = None
    with autocast(config, run_device(config)):
        metrics = algo.meta_backward(tasks)
    theta = {
        name: p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p)
        for name, p in algo.model.named_parameters()
        if p.requires_grad
    }
    rates_norm, rates = None, None
    learned = algo.learned_tensors()  # the rates (Meta-SGD's, a plug-in's): one per parameter
    if learned:
        named = [name for name, _ in algo.model.named_parameters()]
        names = (
            named if len(named) == len(learned) else [f"learned[{i}]" for i in range(len(learned))]
        )
        rates = {
            name: r.grad.detach().clone()
            for name, r in zip(names, learned, strict=True)
            if r.grad is not None
        }
        rates_norm = float(_flat(list(rates.values())).norm()) if rates else 0.0
    finite = all(bool(torch.isfinite(g).all()) for g in theta.values())
    return MetaGradient(theta, rates_norm, metrics.query.mean().item(), finite, rates)
