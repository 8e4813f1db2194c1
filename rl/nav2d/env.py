"""2-D navigation (Finn et al. 2017, §5.3): a point agent walks from the origin to a goal.

A task is a goal drawn uniformly from [−0.5, 0.5]²; the agent starts at the origin and observes
its position; an action is a velocity, clipped to [−0.1, 0.1] per coordinate, added to the
position; the reward is the negative Euclidean distance from the new position to the goal
(pytorch-maml-rl's choice; the paper's text says squared distance: with the distance, returns are
comparable with the numbers published from pytorch-maml-rl, e.g. ANIL's); an episode ends after 100
steps, or as soon as the agent is within 0.01 of the goal (a terminal step).

`Nav2DEnv` is the reference semantics as a Gymnasium environment, ``Nav2D-v0`` (registered by
`register`, never as an import side effect); `rl.nav2d.task.Nav2DDynamics` is the same for
T tasks × N episodes at once (a test compares the two).

```python
import gymnasium as gym
import rl.nav2d

rl.nav2d.register()
env = gym.make("Nav2D-v0")
env.unwrapped.reset_task(np.array([0.3, -0.2]))
```
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

__all__ = [
    "ENV_ID",
    "GOAL_RADIUS",
    "GOAL_RANGE",
    "HORIZON",
    "MAX_SPEED",
    "Nav2DEnv",
    "register",
    "sample_goals",
]

ENV_ID = "Nav2D-v0"
#: Goals are uniform on [−GOAL_RANGE, GOAL_RANGE]².
GOAL_RANGE = 0.5
#: Each velocity coordinate is clipped to [−MAX_SPEED, MAX_SPEED].
MAX_SPEED = 0.1
#: An episode terminates within this distance of the goal.
GOAL_RADIUS = 0.01
#: Steps per episode.
HORIZON = 100


def sample_goals(rng: np.random.Generator, num_tasks: int) -> np.ndarray:
    """``[num_tasks, 2]`` goals uniform on [−0.5, 0.5]² (float64)."""
    if isinstance(num_tasks, bool) or not isinstance(num_tasks, int) or num_tasks < 1:
        raise ValueError(f"num_tasks must be an integer >= 1, got {num_tasks!r}")
    return rng.uniform(-GOAL_RANGE, GOAL_RANGE, size=(num_tasks, 2))


def _check_goal(goal: Any) -> np.ndarray:
    array = np.asarray(goal, dtype=np.float64)
    if array.shape != (2,) or not np.isfinite(array).all():
        raise ValueError(f"goal must be 2 finite numbers, got {goal!r}")
    return array


class Nav2DEnv(gym.Env[np.ndarray, np.ndarray]):
    """One 2-D navigation task at a time (see the module docstring for the task).

    The observation is the position (float32); the action space is the box [−0.1, 0.1]², and
    actions outside it are clipped to it (a Gaussian policy's samples are unbounded).
    ``info["distance"]`` is the distance to the goal.

    Args:
        goal: The task. ``None`` draws one from the environment's generator (``self.np_random``,
            seeded by ``reset(seed=...)``); pass one, or call `reset_task`, for a
            reproducible task.
        max_episode_steps: Truncate after this many steps (``None``: never; ``gymnasium.make``
            consumes this keyword itself and applies its ``TimeLimit`` instead).
        render_mode: Only ``None`` is supported.
    """

    metadata: dict[str, Any] = {"render_modes": []}

    def __init__(
        self,
        goal: Any = None,
        max_episode_steps: int | None = None,
        render_mode: str | None = None,
    ) -> None:
        super().__init__()
        if render_mode is not None:
            raise ValueError(f"Nav2DEnv has no render modes; got render_mode={render_mode!r}")
        if max_episode_steps is not None and (
            isinstance(max_episode_steps, bool)
            or not isinstance(max_episode_steps, int)
            or max_episode_steps < 1
        ):
            raise ValueError(
                f"max_episode_steps must be an integer >= 1 or None, got {max_episode_steps!r}"
            )
        self.render_mode = render_mode
        self.max_episode_steps = max_episode_steps
        self.observation_space = spaces.Box(-np.inf, np.inf, shape=(2,), dtype=np.float32)
        self.action_space = spaces.Box(-MAX_SPEED, MAX_SPEED, shape=(2,), dtype=np.float32)
        self._position = np.zeros(2)
        self._elapsed = 0
        self.reset_task(sample_goals(self.np_random, 1)[0] if goal is None else goal)

    def reset_task(self, goal: Any) -> None:
        """Switch to another goal (takes effect immediately)."""
        self.goal = _check_goal(goal)

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        self._position = np.zeros(2)
        self._elapsed = 0
        return self._position.astype(np.float32), {"distance": float(np.linalg.norm(self.goal))}

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        velocity = np.asarray(action, dtype=np.float64)
        if velocity.shape != (2,) or not np.isfinite(velocity).all():
            raise ValueError(f"action must be 2 finite numbers, got {action!r}")
        self._position = self._position + np.clip(velocity, -MAX_SPEED, MAX_SPEED)
        distance = float(np.linalg.norm(self._position - self.goal))
        self._elapsed += 1
        terminated = distance < GOAL_RADIUS
        truncated = self.max_episode_steps is not None and self._elapsed >= self.max_episode_steps
        return (
            self._position.astype(np.float32),
            -distance,
            terminated,
            truncated,
            {"distance": distance},
        )


def register() -> None:
    """Register ``Nav2D-v0`` with Gymnasium (idempotent), with ``max_episode_steps=100``."""
    if ENV_ID in gym.registry:
        return
    gym.register(id=ENV_ID, entry_point="rl.nav2d.env:Nav2DEnv", max_episode_steps=HORIZON)
