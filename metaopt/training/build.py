"""Building a run's pieces from its config: the algorithm, the outer optimiser, threads and seeds.

`build_algorithm` and `build_outer_optimizer` are also what [`load_run`][metaopt.training.load_run]
and the tools use, so a saved run is rebuilt exactly as it was trained.
"""

from __future__ import annotations

import dataclasses
import random

import numpy as np
import torch

from metaopt.algorithms import MetaLearner, linear_annealing
from metaopt.algorithms.subset import anil_heads
from metaopt.registry import LEARNER, algorithm
from metaopt.training.device import run_device
from metaopt.training.family import ConfigError, TaskFamily, TrainConfig

__all__ = [
    "apply_threads",
    "build_algorithm",
    "build_outer_optimizer",
    "check_adapt",
    "outer_schedule",
    "seed_everything",
]


def build_algorithm(config: TrainConfig, model: torch.nn.Module) -> MetaLearner:
    """The algorithm named by ``config.algo`` around ``model`` (its `metaopt.registry` entry's
    factory, with ``config.options``), adapting ``config.adapt``; the model is moved to the run's
    device first (`metaopt.training.device.run_device`), so its learned state is made there."""
    model = model.to(run_device(config))
    names = [name.strip() for name in config.adapt.split(",") if name.strip()]
    try:
        adapt = [head for name in names for head in _named_heads(model, name)] or None
        return _build(config, model, adapt)
    except ValueError as error:  # adapt= names what the model does not have
        raise ConfigError(f"--adapt {config.adapt}: {error}") from error


def _named_heads(model: torch.nn.Module, name: str) -> list[str]:
    """``--adapt``'s ``name``, with ``anil`` standing for the model's heads (`anil_heads`)."""
    return anil_heads(model) if name == "anil" else [name]


def check_adapt(family: TaskFamily, config: TrainConfig) -> None:
    """Refuse an ``--adapt`` the family's model cannot take, before anything touches the disk.

    The only setting checked against the model itself: it builds one (cheap next to a run) and
    leaves the global random state as it found it.

    Raises:
        ConfigError: ``config.adapt`` names what the model does not have, or nothing trainable.
    """
    if config.adapt:
        with torch.random.fork_rng(devices=[]):
            build_algorithm(config, family.make_model(config))


def _build(config: TrainConfig, model: torch.nn.Module, adapt: list[str] | None) -> MetaLearner:
    settings = {name: getattr(config, name) for name in LEARNER if name != "adapt"}
    if config.precision != "fp32" and settings.get("engine") == "auto":
        # torch.autocast does not reach inside torch.func.vmap, on which the vectorised and
        # compiled engines run: only the loop engine computes in the precision asked for.
        settings["engine"] = "loop"
    options = dataclasses.asdict(config.options)
    return algorithm(config.algo).build(model, adapt=adapt, **settings, **options)


def build_outer_optimizer(
    config: TrainConfig, algo: MetaLearner
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler | None]:
    """The outer optimiser over ``algo.meta_parameters()``, and its learning-rate schedule if
    one is asked (``--outer-schedule``, ``--anneal``; `outer_schedule`)."""
    params = algo.meta_parameters()
    if config.outer_step in ("adam", "trpo"):  # trpo: Adam moves what it does not
        outer: torch.optim.Optimizer = torch.optim.Adam(params, lr=config.outer_lr)
    else:
        outer = torch.optim.SGD(params, lr=config.outer_lr)
    return outer, outer_schedule(outer, config.schedule, config.iterations, config.outer_lr_min)


def outer_schedule(
    outer: torch.optim.Optimizer, name: str, iterations: int, minimum: float = 0.0
) -> torch.optim.lr_scheduler.LRScheduler | None:
    """The outer learning-rate schedule ``name`` over ``iterations`` (stepped once per
    iteration; ``None`` for ``"constant"``).

    ``"linear"``: β_t = β_0 (1 − t/T), the Reptile demo's (`linear_annealing`). ``"cosine"``:
    β_t = β_min + (β_0 − β_min)(1 + cos(π t/T))/2, MAML++'s (Antoniou et al., 2019, §4
    "Cosine annealing of meta-optimizer learning rate"; their code anneals to 1e-5 over every
    iteration of the run with ``torch.optim.lr_scheduler.CosineAnnealingLR``), t the completed
    iterations and T = ``iterations``.
    """
    total = max(iterations, 1)
    if name == "constant":
        return None
    if name == "linear":
        return linear_annealing(outer, total)
    if name == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(outer, T_max=total, eta_min=minimum)
    raise ValueError(f"outer_schedule must be one of constant, linear, cosine; got {name!r}")


def apply_threads(config: TrainConfig) -> None:
    """``config.threads`` torch intra-op threads (0 keeps torch's own setting)."""
    if config.threads:
        torch.set_num_threads(config.threads)


def seed_everything(seed: int) -> None:
    """Seed every global generator a family might touch (they should use the loop's ``rng``)."""
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed)  # noqa: NPY002 - seeded so that a stray global draw still repeats
