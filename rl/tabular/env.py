"""The tabular-MDP task distribution as a Gymnasium environment (``TabularMDP-v0``).

The environment is the reference semantics: one (task, episode) at a time, stepped in Python. The
vectorised sampler (`rl.tabular.sampler`) draws from the same distribution for a whole meta-batch
at once, and a test compares the two statistically.

Registration is explicit (`register`), never an import side effect:

    import gymnasium as gym
    from rl import tabular

    tabular.register()
    env = gym.make("TabularMDP-v0", num_states=10, num_actions=5, max_episode_steps=10)
    task = env.unwrapped.sample_tasks(1)[0]
    env.unwrapped.reset_task(task)
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from rl.sampling import check_horizon, check_size
from rl.tabular.mdp import TabularMDP, sample_mdps

__all__ = ["ENV_ID", "TabularMDPEnv", "register"]

ENV_ID = "TabularMDP-v0"


class TabularMDPEnv(gym.Env[np.ndarray, np.int64]):
    """A random finite MDP from the RL² distribution (Duan et al., 2016), one task at a time.

    Episodes start in state 0; the observation is the one-hot encoding of the state (float32);
    an action ``a`` in state ``s`` moves to ``s' ~ P(· | s, a)`` and pays ``r ~ N(R(s, a), 1)``.
    The MDP never terminates. When made with ``gymnasium.make`` the horizon is Gymnasium's
    ``max_episode_steps`` (a ``TimeLimit`` wrapper truncates); when constructed directly, pass
    ``max_episode_steps`` and the environment truncates itself. ``info["state"]`` is the state
    index.

    Args:
        num_states: S >= 1.
        num_actions: A >= 1.
        max_episode_steps: Truncate after this many steps (``None``: never; ``gymnasium.make``
            consumes this keyword itself and applies its ``TimeLimit`` instead).
        task: The MDP to run. ``None`` draws one from the environment's own generator
            (``self.np_random``, seeded by ``reset(seed=...)``); pass a task, or call
            `reset_task`, for a reproducible one.
        render_mode: Only ``None`` is supported.
    """

    metadata: dict[str, Any] = {"render_modes": []}

    def __init__(
        self,
        num_states: int = 10,
        num_actions: int = 5,
        max_episode_steps: int | None = None,
        task: TabularMDP | None = None,
        render_mode: str | None = None,
    ) -> None:
        super().__init__()
        self.num_states = check_size("num_states", num_states)
        self.num_actions = check_size("num_actions", num_actions)
        self.max_episode_steps = (
            None
            if max_episode_steps is None
            else check_horizon(max_episode_steps, "max_episode_steps")
        )
        if render_mode is not None:
            raise ValueError(f"TabularMDPEnv has no render modes; got render_mode={render_mode!r}")
        self.render_mode = render_mode
        self.observation_space = spaces.Box(0.0, 1.0, shape=(self.num_states,), dtype=np.float32)
        self.action_space = spaces.Discrete(self.num_actions)
        self._state = 0
        self._elapsed = 0
        self.reset_task(self.sample_tasks(1)[0] if task is None else task)

    def sample_tasks(self, num_tasks: int) -> list[TabularMDP]:
        """Draw tasks of this environment's size from its generator (``self.np_random``)."""
        return list(sample_mdps(self.np_random, num_tasks, self.num_states, self.num_actions))

    def reset_task(self, task: TabularMDP) -> None:
        """Switch to another task's dynamics and rewards (takes effect immediately)."""
        if not isinstance(task, TabularMDP):
            raise TypeError(f"task must be a TabularMDP, got {type(task).__name__}")
        expected = (self.num_states, self.num_actions)
        if (task.num_states, task.num_actions) != expected:
            raise ValueError(
                f"task has {task.num_states} states and {task.num_actions} actions; this "
                f"environment has {expected[0]} and {expected[1]}"
            )
        self.task = task

    def _observation(self) -> np.ndarray:
        obs = np.zeros(self.num_states, dtype=np.float32)
        obs[self._state] = 1.0
        return obs

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        self._state = 0
        self._elapsed = 0
        return self._observation(), {"state": self._state}

    def step(
        self, action: int | np.integer
    ) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        if not self.action_space.contains(action):
            raise ValueError(
                f"action must be an integer in [0, {self.num_actions}), got {action!r}"
            )
        s, a = self._state, int(action)
        reward = float(self.np_random.normal(self.task.reward_means[s, a], 1.0))
        self._state = int(self.np_random.choice(self.num_states, p=self.task.transitions[s, a]))
        self._elapsed += 1
        truncated = self.max_episode_steps is not None and self._elapsed >= self.max_episode_steps
        # The MDP itself never terminates; only the horizon (truncation) ends an episode.
        return self._observation(), reward, False, truncated, {"state": self._state}


def register() -> None:
    """Register ``TabularMDP-v0`` with Gymnasium (idempotent; call it before ``gymnasium.make``).

    The registered defaults are those of TorchOpt's MAML-RL example: 10 states, 5 actions,
    ``max_episode_steps=10``; ``gymnasium.make`` overrides any of them.
    """
    if ENV_ID in gym.registry:
        return
    gym.register(
        id=ENV_ID,
        entry_point="rl.tabular.env:TabularMDPEnv",
        max_episode_steps=10,
        kwargs={"num_states": 10, "num_actions": 5},
    )
