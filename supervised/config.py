"""Configuration fields the supervised families share, and validators whose messages name the flag."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

from metaopt.training.family import ConfigError, TrainConfig, flag, option

__all__ = [
    "SupervisedConfig",
    "check_choice",
    "check_int",
    "check_real",
    "flag",
]


@dataclass
class SupervisedConfig(TrainConfig):
    """Fields of the pretrained baseline that every supervised evaluation compares against.

    The baseline is the comparison Finn et al. (2017) draw for sine regression: the same network
    trained by ordinary supervised learning on tasks pooled together, then fine-tuned on each
    held-out task's support set exactly like the meta-learned model. It is trained when the run is
    evaluated, from ``baseline_seed``, and cached as ``baseline.pt`` in the run directory.
    """

    baseline_steps: int = option(
        2000, "Adam steps of the pretrained baseline (0: the untrained initialisation)"
    )
    baseline_lr: float = option(1e-3, "Adam learning rate of the pretrained baseline")
    baseline_tasks: int = option(25, "tasks pooled into each baseline training step")
    baseline_seed: int = option(0, "seed of the baseline's initialisation and training tasks")

    #: The baseline is trained at evaluation time, so its settings may change on ``--resume``.
    RESUMABLE: ClassVar[tuple[str, ...]] = (
        *TrainConfig.RESUMABLE,
        "baseline_steps",
        "baseline_lr",
        "baseline_tasks",
        "baseline_seed",
    )

    def validate(self) -> None:
        super().validate()
        check_int(self, "baseline_steps", 0)
        check_int(self, "baseline_tasks", 1)
        check_int(self, "baseline_seed", 0)
        check_real(self, "baseline_lr", low=0.0, low_open=True)


def check_int(config: object, name: str, low: int, high: int | None = None, why: str = "") -> None:
    """Raise :class:`ConfigError` unless field ``name`` is an integer in ``[low, high]``."""
    value = getattr(config, name)
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= low
    if ok and high is not None:
        ok = value <= high
    if not ok:
        allowed = f">= {low}" if high is None else f"between {low} and {high}"
        raise ConfigError(f"{flag(name)} must be an integer {allowed}{why}; got {value!r}")


def check_real(
    config: object,
    name: str,
    *,
    low: float | None = None,
    low_open: bool = False,
) -> None:
    """Raise :class:`ConfigError` unless field ``name`` is a finite number above ``low``."""
    value = getattr(config, name)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigError(f"{flag(name)} must be a finite number; got {value!r}")
    if low is not None and (value < low or (low_open and value == low)):
        relation = ">" if low_open else ">="
        raise ConfigError(f"{flag(name)} must be {relation} {low:g}; got {value!r}")


def check_choice(config: object, name: str, allowed: Sequence[str]) -> None:
    """Raise :class:`ConfigError` unless field ``name`` is one of ``allowed``."""
    value = getattr(config, name)
    if value not in allowed:
        raise ConfigError(f"{flag(name)} must be one of {', '.join(allowed)}; got {value!r}")
