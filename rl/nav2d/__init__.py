"""MAML's 2-D navigation (Finn et al. 2017, §5.3): ``metaopt train nav2d``.

* `rl.nav2d.env`: the task (goals, the Gymnasium environment ``Nav2D-v0``, `register`);
* `rl.nav2d.task`: every (goal, episode) simulated at once, and `Nav2DTaskBatch` for the core;
* `rl.nav2d.family`: ``metaopt train nav2d`` (a `rl.goal_family.GoalFamily`);
* `rl.nav2d.plots`: the trajectory picture of a run.
"""

from typing import TYPE_CHECKING

from metaopt._lazy import lazy_exports

if TYPE_CHECKING:
    from rl.nav2d.env import ENV_ID, Nav2DEnv, register, sample_goals
    from rl.nav2d.family import Nav2DFamily
    from rl.nav2d.task import Nav2DDynamics, Nav2DTaskBatch

# Imported on first use (metaopt._lazy), as the shared package's names are.
__getattr__ = lazy_exports(
    __name__,
    {
        "ENV_ID": "rl.nav2d.env",
        "Nav2DEnv": "rl.nav2d.env",
        "register": "rl.nav2d.env",
        "sample_goals": "rl.nav2d.env",
        "Nav2DFamily": "rl.nav2d.family",
        "Nav2DDynamics": "rl.nav2d.task",
        "Nav2DTaskBatch": "rl.nav2d.task",
    },
)

__all__ = [
    "ENV_ID",
    "Nav2DDynamics",
    "Nav2DEnv",
    "Nav2DFamily",
    "Nav2DTaskBatch",
    "register",
    "sample_goals",
]
