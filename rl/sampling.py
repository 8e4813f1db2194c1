"""What every family's sampler shares: the policy signature, the checks of sizes and horizons, and
the methods of the NamedTuples of sampled episodes and of their noise.

A family's sampler (`rl.tabular.sampler`, `rl.continuous.rollout` with a family's dynamics) draws
all the randomness of a sampling phase up front, as a NamedTuple of time-major tensors whose
axis 1 is the task; the episodes are a NamedTuple of the same layout. `tasks_of` and `task_of`
slice either (a shard of a meta-batch, one task of the loop engine), and `episode_returns` sums
an episode's rewards.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np
import torch

__all__ = [
    "PolicyFn",
    "check_horizon",
    "check_size",
    "episode_returns",
    "task_of",
    "tasks_of",
]

#: Observations [..., S] -> (action logits [..., A], state values [...]): a categorical policy, as
#: the tabular sampler calls it (`rl.continuous.GaussianPolicyFn` is the Gaussian one's).
PolicyFn = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def check_size(name: str, value: object) -> int:
    """Validate a number of states, actions or episodes (an integer >= 1)."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return int(value)


def check_horizon(horizon: object, name: str = "horizon") -> int:
    """Validate an episode length (an integer >= 1)."""
    if isinstance(horizon, bool) or not isinstance(horizon, int | np.integer) or horizon < 1:
        raise ValueError(f"{name} (episode length) must be an integer >= 1, got {horizon!r}")
    return int(horizon)


_Fields = TypeVar("_Fields", bound=tuple[torch.Tensor, ...])


# Methods of the NamedTuples of sampled episodes and their noise, tabular and continuous (a
# NamedTuple cannot inherit them from a mixin), written once here.


def tasks_of(fields: _Fields, indices: slice) -> _Fields:
    """The tasks ``indices`` of a NamedTuple of time-major tensors (axis 1 of every field)."""
    return type(fields)(*(x[:, indices] for x in fields))


def task_of(fields: _Fields, index: int) -> _Fields:
    """Task ``index`` of a NamedTuple of time-major tensors, keeping a task axis of length 1."""
    return tasks_of(fields, slice(index, index + 1))


def episode_returns(trajectories: Any) -> torch.Tensor:
    """Undiscounted return of every episode, ``[T, N]`` (the rewards are 0 after an episode
    ended)."""
    return trajectories.rewards.sum(0)
