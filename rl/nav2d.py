"""2-D navigation (Finn et al. 2017, §5.3): a point agent walks from the origin to a goal.

A task is a goal drawn uniformly from [−0.5, 0.5]²; the agent starts at the origin and observes
its position; an action is a velocity, clipped to [−0.1, 0.1] per coordinate, added to the
position; the reward is the negative Euclidean distance from the new position to the goal
(pytorch-maml-rl's choice; the paper's text says squared distance: with the distance, returns are
comparable with the numbers published from pytorch-maml-rl, e.g. ANIL's); an episode ends after 100
steps, or as soon as the agent is within 0.01 of the goal (a terminal step).

* `Nav2DEnv` is the reference semantics as a Gymnasium environment, ``Nav2D-v0``
  (registered by `register`, never as an import side effect);
* `Nav2DDynamics` is the same, for T tasks × N episodes at once, for
  `rl.continuous.rollout` (a test compares the two);
* `Nav2DTaskBatch` is a meta-batch for the core (`rl.task.RLTaskBatch`).

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
import torch
from gymnasium import spaces

from rl.continuous import (
    ContinuousTrajectories,
    GaussianNoise,
    GaussianPolicyFn,
    GaussianScorer,
    rollout,
)
from rl.task import A2CSettings, RLTaskBatch

__all__ = [
    "ENV_ID",
    "GOAL_RADIUS",
    "GOAL_RANGE",
    "HORIZON",
    "MAX_SPEED",
    "Nav2DDynamics",
    "Nav2DEnv",
    "Nav2DTaskBatch",
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
    gym.register(id=ENV_ID, entry_point="rl.nav2d:Nav2DEnv", max_episode_steps=HORIZON)


class Nav2DDynamics:
    """T goals × N episodes of `Nav2DEnv` at once (`rl.continuous.Dynamics`).

    Args:
        goals: ``[T, 2]``.
    """

    def __init__(self, goals: torch.Tensor) -> None:
        self.goals = goals

    def reset(self, num_episodes: int) -> torch.Tensor:
        return self.goals.new_zeros((self.goals.shape[0], num_episodes, 2))

    def observe(self, states: torch.Tensor) -> torch.Tensor:
        return states

    def step(
        self, states: torch.Tensor, actions: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        following = states + actions.clamp(-MAX_SPEED, MAX_SPEED)
        distance = (following - self.goals[:, None, :]).norm(dim=-1)
        return following, -distance, distance < GOAL_RADIUS


class Nav2DTaskBatch(RLTaskBatch):
    """A meta-batch of navigation goals for the core (see `rl.task.RLTaskBatch`).

    Args:
        goals: ``[T, 2]`` goals.
        settings: Sampling and loss settings (``horizon``: 100 in the paper).
        generator: Source of all sampling randomness.
        normalize_advantages: Standardise the A2C policy term's advantages per task.
        baseline: What the advantages subtract (`rl.continuous.GaussianScorer`):
            ``critic`` or ``linear``.
        time_feature: The policy reads `rl.continuous.with_time` observations (a
            `rl.continuous.GaussianMLPPolicy` with ``critic_time``).
    """

    def __init__(
        self,
        goals: np.ndarray | torch.Tensor,
        settings: A2CSettings,
        generator: torch.Generator,
        normalize_advantages: bool = True,
        baseline: str = "critic",
        time_feature: bool = False,
    ) -> None:
        self.goals = torch.as_tensor(goals, dtype=torch.float32)
        if self.goals.dim() != 2 or self.goals.shape[1] != 2:
            raise ValueError(f"goals must have shape [T, 2], got {tuple(self.goals.shape)}")
        self.normalize_advantages = normalize_advantages
        self.baseline = baseline
        self.time_feature = time_feature
        scorer = GaussianScorer(normalize_advantages, baseline, settings.gamma, time_feature)
        super().__init__(len(self.goals), settings, generator, scorer)

    def draw_noise(self) -> GaussianNoise:
        s = self.settings
        return GaussianNoise.draw(self.generator, s.horizon, len(self), s.trajectories, 2)

    def simulate(
        self, policy: GaussianPolicyFn, noise: GaussianNoise, index: int | None = None
    ) -> ContinuousTrajectories:
        goals = self.goals if index is None else self.goals[index : index + 1]
        return rollout(policy, Nav2DDynamics(goals), noise, self.time_feature)

    def subset(self, indices: slice) -> Nav2DTaskBatch:
        return Nav2DTaskBatch(
            self.goals[indices],
            self.settings,
            self.generator,
            self.normalize_advantages,
            self.baseline,
            self.time_feature,
        )

    def mean_entropy(self, policy: GaussianPolicyFn) -> float:
        """Entropy (nats) of the action distribution at the start, averaged over tasks."""
        with torch.no_grad():
            start = self.goals.new_zeros((len(self), 1, 2 + self.time_feature))
            _, log_std, _ = policy(start)
            return (log_std + 0.5 * np.log(2 * np.pi * np.e)).sum(-1).mean().item()
