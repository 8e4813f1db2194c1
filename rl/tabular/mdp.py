"""Tabular MDP tasks as plain data, their distribution, and exact reference returns.

The task distribution is the one of Duan et al. (2016), "RL²: Fast Reinforcement Learning via Slow
Reinforcement Learning" (arXiv:1611.02779), as implemented in pytorch-maml-rl and TorchOpt's
MAML-RL example:

* transitions ``P(· | s, a) ~ Dirichlet(1, ..., 1)`` independently for every (state, action);
* reward means ``R(s, a) ~ N(1, 1)``; an observed reward is ``N(R(s, a), 1)``;
* every episode starts in state 0 and lasts ``horizon`` steps (the MDP never terminates).

A task is a `TabularMDP` (two arrays); a meta-batch is a `TabularMDPBatch` (the same
two arrays stacked). Both validate themselves on construction. The reference returns
(`random_policy_return`, `optimal_return`) are exact expectations computed by
finite-horizon backward induction, so a score can be normalised per task:
``(return − random) / (optimal − random)``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from rl.sampling import check_horizon, check_size

__all__ = [
    "TabularMDP",
    "TabularMDPBatch",
    "normalized_score",
    "optimal_q_values",
    "optimal_return",
    "random_policy_return",
    "sample_mdps",
]

#: How far a transition row may sum away from 1 (float32 round-off of a Dirichlet draw is ~1e-7).
ROW_SUM_TOLERANCE = 1e-5


@dataclass(frozen=True)
class _MDPArrays:
    """The two arrays of one task or, with a leading task dimension N, of a meta-batch:
    ``transitions [(N,) S, A, S]`` and ``reward_means [(N,) S, A]``, validated on construction."""

    transitions: np.ndarray
    reward_means: np.ndarray

    #: Whether the arrays have the leading task dimension N.
    batched: ClassVar[bool] = False

    def __post_init__(self) -> None:
        _validate(self.transitions, self.reward_means, batched=self.batched)

    @property
    def num_states(self) -> int:
        return int(self.transitions.shape[-3])

    @property
    def num_actions(self) -> int:
        return int(self.transitions.shape[-2])


@dataclass(frozen=True)
class TabularMDP(_MDPArrays):
    """One task: the dynamics and mean rewards of a finite MDP.

    Attributes:
        transitions: ``[S, A, S]`` array, ``transitions[s, a, s']`` = P(s' | s, a); rows sum to 1.
        reward_means: ``[S, A]`` array of mean rewards R(s, a); observed rewards add N(0, 1) noise.
    """


@dataclass(frozen=True)
class TabularMDPBatch(_MDPArrays, Sequence[TabularMDP]):
    """A meta-batch of tasks of one size: ``transitions [N, S, A, S]``, ``reward_means [N, S, A]``."""

    batched: ClassVar[bool] = True

    @classmethod
    def stack(cls, mdps: Sequence[TabularMDP]) -> TabularMDPBatch:
        """Stack tasks of the same size into a batch."""
        if len(mdps) == 0:
            raise ValueError("cannot stack an empty list of tasks")
        shapes = {m.transitions.shape for m in mdps}
        if len(shapes) > 1:
            raise ValueError(f"tasks of different sizes cannot be stacked: {sorted(shapes)}")
        return cls(
            np.stack([m.transitions for m in mdps]), np.stack([m.reward_means for m in mdps])
        )

    def __len__(self) -> int:
        return int(self.transitions.shape[0])

    def __getitem__(self, index):  # type: ignore[no-untyped-def]  # Sequence's int/slice overload
        if isinstance(index, slice):
            return TabularMDPBatch(self.transitions[index], self.reward_means[index])
        return TabularMDP(self.transitions[index], self.reward_means[index])

    def __iter__(self) -> Iterator[TabularMDP]:
        return (self[i] for i in range(len(self)))


def _validate(transitions: np.ndarray, reward_means: np.ndarray, *, batched: bool) -> None:
    lead = "[N, S, A, S]" if batched else "[S, A, S]"
    for name, array in (("transitions", transitions), ("reward_means", reward_means)):
        if not isinstance(array, np.ndarray):
            raise TypeError(f"{name} must be a numpy array, got {type(array).__name__}")
    dims = 4 if batched else 3
    if transitions.ndim != dims:
        raise ValueError(f"transitions must have shape {lead}, got {transitions.shape}")
    *batch, states, actions, next_states = transitions.shape
    if states != next_states:
        raise ValueError(
            f"transitions must have shape {lead} with the same number of states on both axes, "
            f"got {transitions.shape}"
        )
    check_size("num_states", states)
    check_size("num_actions", actions)
    if reward_means.shape != (*batch, states, actions):
        raise ValueError(
            f"reward_means must have shape {(*batch, states, actions)} to match transitions "
            f"{transitions.shape}, got {reward_means.shape}"
        )
    if not np.all(np.isfinite(reward_means)):
        bad = _first(~np.isfinite(reward_means))
        raise ValueError(f"reward_means must be finite, got {reward_means[bad]} at index {bad}")
    if not np.all(np.isfinite(transitions)) or np.any(transitions < 0):
        bad = _first(~(np.isfinite(transitions) & (transitions >= 0)))
        raise ValueError(
            f"transitions must be finite probabilities >= 0, got {transitions[bad]} at index {bad}"
        )
    sums = transitions.sum(axis=-1)
    if np.any(np.abs(sums - 1.0) > ROW_SUM_TOLERANCE):
        bad = _first(np.abs(sums - 1.0) > ROW_SUM_TOLERANCE)
        raise ValueError(
            f"transition rows must sum to 1 (a distribution over next states), but the row at "
            f"index {bad} sums to {sums[bad]:.6g}"
        )


def _first(mask: np.ndarray) -> tuple[int, ...]:
    """Index of the first True entry, as plain ints (for error messages)."""
    return tuple(int(i) for i in np.argwhere(mask)[0])


def sample_mdps(
    rng: np.random.Generator, num_tasks: int, num_states: int = 10, num_actions: int = 5
) -> TabularMDPBatch:
    """Draw ``num_tasks`` tasks from the RL² tabular distribution (Duan et al., 2016).

    Tasks are drawn one after another, so the first k tasks of a call with ``num_tasks > k`` are
    the tasks of a call with ``num_tasks = k`` from the same generator state: a larger held-out
    set extends a smaller one.

    Args:
        rng: The only source of randomness.
        num_tasks: How many tasks.
        num_states: S.
        num_actions: A.
    """
    check_size("num_tasks", num_tasks)
    check_size("num_states", num_states)
    check_size("num_actions", num_actions)
    transitions = np.empty((num_tasks, num_states, num_actions, num_states))
    reward_means = np.empty((num_tasks, num_states, num_actions))
    concentration = np.ones(num_states)
    for i in range(num_tasks):
        transitions[i] = rng.dirichlet(concentration, size=(num_states, num_actions))
        reward_means[i] = rng.normal(1.0, 1.0, size=(num_states, num_actions))
    return TabularMDPBatch(transitions, reward_means)


def _as_batch(mdps: TabularMDP | TabularMDPBatch) -> TabularMDPBatch:
    if isinstance(mdps, TabularMDP):
        return TabularMDPBatch(mdps.transitions[None], mdps.reward_means[None])
    return mdps


def optimal_q_values(mdps: TabularMDP | TabularMDPBatch, horizon: int) -> np.ndarray:
    """Finite-horizon optimal action values by backward induction (undiscounted).

    ``Q_t(s, a) = R(s, a) + Σ_s' P(s' | s, a) max_a' Q_{t+1}(s', a')`` with ``Q_horizon = 0``: the
    expected sum of the rewards still to come when ``horizon − t`` steps remain. The optimal
    policy of a task that is known is time-dependent: ``argmax_a Q_t(s, a)`` at step t.

    Returns:
        ``[horizon, N, S, A]`` array (N = 1 for a single task).
    """
    horizon = check_horizon(horizon)
    batch = _as_batch(mdps)
    return _backward_induction(batch, horizon, optimal=True)


def _backward_induction(batch: TabularMDPBatch, horizon: int, *, optimal: bool) -> np.ndarray:
    transitions = batch.transitions.astype(np.float64)
    rewards = batch.reward_means.astype(np.float64)
    q = np.empty((horizon, *rewards.shape))
    value_next = np.zeros(rewards.shape[:2])  # V_horizon(s) = 0 for every task and state
    for t in reversed(range(horizon)):
        q[t] = rewards + np.einsum("nsap,np->nsa", transitions, value_next)
        # The uniform policy averages over actions; the optimal one takes the best.
        value_next = q[t].max(axis=-1) if optimal else q[t].mean(axis=-1)
    return q


def optimal_return(mdps: TabularMDP | TabularMDPBatch, horizon: int) -> np.ndarray:
    """Expected return from state 0 of the optimal policy that knows the task, one per task.

    About 21.8 on average for 10 states, 5 actions and horizon 10 (Duan et al., 2016 setting).
    """
    return optimal_q_values(mdps, horizon)[0, :, 0, :].max(axis=-1)


def random_policy_return(mdps: TabularMDP | TabularMDPBatch, horizon: int) -> np.ndarray:
    """Expected return from state 0 of the uniformly random policy, one per task.

    About 10.0 on average (the reward means have mean 1, and a policy that does not know the
    task cannot do better than 1 per step in expectation).
    """
    horizon = check_horizon(horizon)
    q = _backward_induction(_as_batch(mdps), horizon, optimal=False)
    return q[0, :, 0, :].mean(axis=-1)


def normalized_score(
    returns: np.ndarray, random_returns: np.ndarray, optimal_returns: np.ndarray
) -> np.ndarray:
    """Per-task ``(return − random) / (optimal − random)``: 0 = random policy, 1 = optimal."""
    return (np.asarray(returns) - random_returns) / (optimal_returns - random_returns)
