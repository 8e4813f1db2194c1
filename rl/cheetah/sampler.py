"""Every (task, episode) pair of a meta-batch of HalfCheetah tasks, simulated together.

`CheetahDynamics` is a `rl.continuous.Dynamics`, so `rl.continuous.rollout` samples
HalfCheetah episodes exactly as it samples nav2d's: one policy forward per time step for all T × N
episodes at once, the noise drawn up front. The physics is MuJoCo's, on one ``MjData`` per
episode, each stepped by ``mujoco.mj_step`` (native code, five physics steps per environment step)
in a loop over the episodes: per episode and step, Python only hands the action in and reads the
state out. ``mujoco.rollout`` was measured as the alternative and set aside: it restarts each
call from a state that does not carry the constraint solver's warm start, so a rollout resumed
every environment step drifts from ``HalfCheetah-v5`` (its trajectories differed from the
environment's from the third step on), and it was no faster on one thread.

The simulation is stateful, unlike nav2d's: the ``states`` that `CheetahDynamics.reset` and
`CheetahDynamics.step` return are the observations, and ``step`` must be handed the states it
returned last (what `rl.continuous.rollout` does). Each episode starts as
``HalfCheetah-v5``'s ``reset(seed=s)`` does, for the episode's own seed ``s``, so an episode is
replayed in the Gymnasium environment by resetting it with that seed and feeding it the actions.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import mujoco
import numpy as np
import torch

from rl.cheetah.env import GoalCheetahEnv, task_reward

__all__ = ["CheetahDynamics", "episode_seeds"]

_QPOS_QVEL = int(mujoco.mjtState.mjSTATE_QPOS) | int(mujoco.mjtState.mjSTATE_QVEL)


def episode_seeds(rng: np.random.Generator, num_tasks: int, num_episodes: int) -> np.ndarray:
    """``[num_tasks, num_episodes]`` seeds of the episodes' start states (int64, below 2³¹)."""
    return rng.integers(0, 2**31 - 1, size=(num_tasks, num_episodes), dtype=np.int64)


class CheetahDynamics:
    """T HalfCheetah tasks × N episodes each, for `rl.continuous.rollout`.

    Args:
        task: ``vel`` or ``dir`` (`rl.cheetah.env.TASKS`).
        goals: ``[T]`` the tasks' goals.
        seeds: ``[T, N]`` each episode's start-state seed (`episode_seeds`).
        dtype: Of the observations and rewards handed back (the policy's); the physics is
            float64, and a float64 policy's episodes equal the Gymnasium environment's bit for bit.
        threads: Threads that step the episodes (1: the calling thread alone). ``mj_step``
            releases the GIL, so more threads can use more cores.
        data_pool: ``MjData`` to simulate on, reused across instances (each is reset before
            use): making one takes about 1.6 ms, more than 70 steps of it. The first T × N are
            used; the list is extended where it is shorter. ``None``: fresh ones.
    """

    def __init__(
        self,
        task: str,
        goals: Sequence[float] | np.ndarray,
        seeds: np.ndarray,
        dtype: torch.dtype = torch.float32,
        threads: int = 1,
        data_pool: list[mujoco.MjData] | None = None,
    ) -> None:
        goal_array = np.asarray(goals, dtype=np.float64)
        seeds = np.asarray(seeds)
        if goal_array.ndim != 1 or seeds.shape[:1] != goal_array.shape or seeds.ndim != 2:
            raise ValueError(
                f"seeds must be [T, N] for T = {goal_array.shape} goals, got {seeds.shape}"
            )
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise ValueError(f"threads must be an integer >= 1, got {threads!r}")
        # The reference environment gives the model, the frame skip and the start states.
        self._env = GoalCheetahEnv(task, goal=float(goal_array[0]))
        self.task = task
        self.model = self._env.model
        self.goals = goal_array
        self.seeds = seeds
        self.dtype = dtype
        self.num_tasks, self.num_episodes = seeds.shape
        count = seeds.size
        pool = [] if data_pool is None else data_pool
        pool.extend(mujoco.MjData(self.model) for _ in range(count - len(pool)))
        self._data = pool[:count]
        self._state = np.zeros((count, self.model.nq + self.model.nv))
        self._x = np.zeros(count)
        bounds = np.linspace(0, count, min(threads, count) + 1).astype(int)
        self._chunks = [(int(lo), int(hi)) for lo, hi in itertools.pairwise(bounds)]
        self._pool = ThreadPoolExecutor(len(self._chunks)) if len(self._chunks) > 1 else None

    def close(self) -> None:
        """Stop the threads (if any)."""
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None

    def _observations(self) -> torch.Tensor:
        obs = self._state[:, 1:].reshape(self.num_tasks, self.num_episodes, -1)
        return torch.from_numpy(obs).to(self.dtype, copy=True)  # the buffer is overwritten

    def reset(self, num_episodes: int) -> torch.Tensor:
        """Start every episode as ``HalfCheetah-v5``'s ``reset(seed=...)`` does; observations
        ``[T, N, 17]``."""
        if num_episodes != self.num_episodes:
            raise ValueError(
                f"num_episodes must be {self.num_episodes} (the seeds' second size), got "
                f"{num_episodes!r}"
            )
        env = self._env
        for data, state, seed in zip(self._data, self._state, self.seeds.flat, strict=True):
            env.reset(seed=int(seed))
            mujoco.mj_resetData(self.model, data)
            data.qpos[:] = env.data.qpos
            data.qvel[:] = env.data.qvel
            mujoco.mj_forward(self.model, data)
            mujoco.mj_getState(self.model, data, state, _QPOS_QVEL)
        self._x = self._state[:, 0].copy()
        return self._observations()

    def observe(self, states: torch.Tensor) -> torch.Tensor:
        """The states are the observations."""
        return states

    def _advance(self, controls: np.ndarray, lo: int, hi: int) -> None:
        model, skip, state = self.model, self._env.frame_skip, self._state
        for i in range(lo, hi):
            data = self._data[i]
            data.ctrl[:] = controls[i]
            mujoco.mj_step(model, data, skip)
            mujoco.mj_getState(model, data, state[i], _QPOS_QVEL)

    def step(
        self, states: torch.Tensor, actions: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Advance every episode by one environment step (``HalfCheetah-v5``'s ``step``);
        ``states`` must be those the last call returned."""
        controls = actions.detach().to(torch.float64).reshape(-1, self.model.nu).numpy()
        if self._pool is None:
            self._advance(controls, 0, len(self._data))
        else:
            for future in [
                self._pool.submit(self._advance, controls, lo, hi) for lo, hi in self._chunks
            ]:
                future.result()
        x = self._state[:, 0].copy()
        velocity = (x - self._x) / self._env.dt
        self._x = x
        goals = np.repeat(self.goals, self.num_episodes)
        rewards = task_reward(self.task, velocity, goals, controls)
        shape = (self.num_tasks, self.num_episodes)
        return (
            self._observations(),
            torch.from_numpy(rewards.reshape(shape)).to(self.dtype),
            torch.zeros(shape, dtype=torch.bool),
        )
