r"""HalfCheetah with a goal: velocity (``HalfCheetahVel-v0``) and direction (``HalfCheetahDir-v0``).

Finn et al. 2017's locomotion tasks on Gymnasium's ``HalfCheetah-v5`` model and physics (the
environments subclass its `HalfCheetahEnv`: same XML, frame skip 5, reset noise, 17-number
observation). Only the reward is the task's, with $v$ the forward velocity of the torso over the
step and $a$ the action:

* velocity: $r = -|v - v_\text{goal}| - 0.05\,\lVert a\rVert^2$, $v_\text{goal} \sim U[0, 2]$;
* direction: $r = d\,v - 0.05\,\lVert a\rVert^2$, $d = \pm 1$ with equal probability.

Episodes are truncated after 100 steps (`HORIZON`). A task is its goal: pass ``goal=`` or call
`GoalCheetahEnv.reset_task`; with neither, one is drawn from the environment's generator
(``reset(seed=...)`` seeds it). Registration is explicit (`register`), never an import side
effect; it needs MuJoCo (``pip install -e '.[mujoco]'``):

```python
import gymnasium as gym
import rl.cheetah.env

rl.cheetah.env.register()
env = gym.make("HalfCheetahVel-v0")
env.unwrapped.reset_task(1.5)
```
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.envs.mujoco.half_cheetah_v5 import HalfCheetahEnv

__all__ = [
    "CONTROL_COST",
    "ENV_IDS",
    "HORIZON",
    "TASKS",
    "GoalCheetahEnv",
    "HalfCheetahDirEnv",
    "HalfCheetahVelEnv",
    "register",
    "sample_goals",
    "task_reward",
]

#: Weight of ‖a‖² in both tasks' rewards (pytorch-maml-rl's 0.5 · 1e-1).
CONTROL_COST = 0.05
#: Steps per episode.
HORIZON = 100
#: The two tasks, by name.
TASKS = ("vel", "dir")
#: Gymnasium ids, by task.
ENV_IDS = {"vel": "HalfCheetahVel-v0", "dir": "HalfCheetahDir-v0"}
#: Largest target velocity of ``vel`` (goals are uniform on [0, MAX_VELOCITY]).
MAX_VELOCITY = 2.0


def _check_task(task: str) -> None:
    if task not in TASKS:
        raise ValueError(f"task must be one of {', '.join(TASKS)}; got {task!r}")


def sample_goals(rng: np.random.Generator, task: str, num_tasks: int) -> np.ndarray:
    """``[num_tasks]`` goals (float64): velocities uniform on [0, 2] or directions ±1."""
    _check_task(task)
    if isinstance(num_tasks, bool) or not isinstance(num_tasks, int) or num_tasks < 1:
        raise ValueError(f"num_tasks must be an integer >= 1, got {num_tasks!r}")
    if task == "vel":
        return rng.uniform(0.0, MAX_VELOCITY, size=num_tasks)
    return rng.choice(np.array([-1.0, 1.0]), size=num_tasks)


def task_reward(
    task: str, velocity: np.ndarray, goal: np.ndarray, action: np.ndarray
) -> np.ndarray:
    """The reward of a step (elementwise over leading dimensions; ``action`` ``[..., 6]``)."""
    control = CONTROL_COST * np.sum(np.square(action), axis=-1)
    if task == "vel":
        return -np.abs(velocity - goal) - control
    return goal * velocity - control


class GoalCheetahEnv(HalfCheetahEnv):
    """``HalfCheetah-v5`` with the reward of ``task`` towards a goal (see the module docstring).

    ``info`` keeps ``HalfCheetah-v5``'s ``x_position`` and ``x_velocity`` and adds ``goal``.

    Args:
        task: ``vel`` or ``dir``.
        goal: The task's goal; ``None`` draws one from ``self.np_random``.
        **kwargs: Passed on to `HalfCheetahEnv` (``render_mode``, for one); the reward's own
            keywords are fixed by the task.
    """

    def __init__(self, task: str, goal: Any = None, **kwargs: Any) -> None:
        _check_task(task)
        super().__init__(forward_reward_weight=1.0, ctrl_cost_weight=CONTROL_COST, **kwargs)
        self.task = task
        self.reset_task(sample_goals(self.np_random, task, 1)[0] if goal is None else goal)

    def reset_task(self, goal: Any) -> None:
        """Switch to another goal (takes effect immediately)."""
        value = np.asarray(goal, dtype=np.float64)
        ok = value.shape == () and np.isfinite(value)
        if self.task == "dir":
            ok = ok and float(value) in (-1.0, 1.0)
        if not ok:
            allowed = "a finite number" if self.task == "vel" else "-1 or 1"
            raise ValueError(f"goal of {self.task} must be {allowed}, got {goal!r}")
        self.goal = float(value)

    def _get_rew(self, x_velocity: float, action: Any) -> tuple[float, dict[str, float]]:
        reward = float(task_reward(self.task, np.float64(x_velocity), self.goal, action))
        return reward, {"goal": self.goal}


class HalfCheetahVelEnv(GoalCheetahEnv):
    """``HalfCheetahVel-v0``: run at the goal velocity."""

    def __init__(self, goal: Any = None, **kwargs: Any) -> None:
        super().__init__("vel", goal, **kwargs)


class HalfCheetahDirEnv(GoalCheetahEnv):
    """``HalfCheetahDir-v0``: run forwards (goal 1) or backwards (goal −1)."""

    def __init__(self, goal: Any = None, **kwargs: Any) -> None:
        super().__init__("dir", goal, **kwargs)


def register() -> None:
    """Register both environments with Gymnasium (idempotent), with ``max_episode_steps=100``."""
    for task, cls in (("vel", HalfCheetahVelEnv), ("dir", HalfCheetahDirEnv)):
        if ENV_IDS[task] not in gym.registry:
            entry_point = f"rl.cheetah.env:{cls.__name__}"
            gym.register(id=ENV_IDS[task], entry_point=entry_point, max_episode_steps=HORIZON)
