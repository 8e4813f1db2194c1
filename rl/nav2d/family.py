"""``metaopt train nav2d``: MAML's 2-D navigation (Finn et al. 2017, §5.3) with a Gaussian policy.

The paper's settings: goals uniform on [−0.5, 0.5]², horizon 100, 20 trajectories per gradient
step, 20 tasks per meta-batch, inner learning rate 0.1 (vanilla policy gradient), a policy MLP
with two hidden layers of 100 ReLU units (Finn et al. 2017, §5.3 and appendix A.2, as the issue
quotes them). Its outer optimiser is TRPO, and so is the default here (``--outer-optimizer
auto``: MAML-TRPO, `rl.trust_region`, with pytorch-maml-rl's settings and its linear
feature baseline; Adam, annealed linearly to 0 over the run, for Reptile). The inner loss is the
A2C loss with log-densities (`rl.continuous`), its advantages standardised per task (as
pytorch-maml-rl does), so that the inner step at lr 0.1 does not scale with the returns.

The evaluation and the baselines are every goal-conditioned family's (`rl.goal_family`).
``nav2d_trajectories.png`` is the paper's picture: mean-action trajectories before and after 1
and 3 steps, for a few held-out goals, of the meta-learned, pretrained and randomly initialised
policies.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from metaopt.algorithms import MetaLearner
from metaopt.training.family import RunResults
from rl.config import NAV2D, Nav2DConfig
from rl.continuous import GaussianNoise
from rl.goal_family import EVAL_STEPS, GoalFamily
from rl.nav2d.env import sample_goals
from rl.nav2d.task import Nav2DTaskBatch
from rl.task import A2CSettings

__all__ = ["EVAL_STEPS", "Nav2DConfig", "Nav2DFamily"]

#: Steps drawn in the trajectory picture.
PICTURE_STEPS = (0, 1, 3)


class Nav2DFamily(GoalFamily, options=NAV2D):
    """MAML's 2-D navigation: reach a goal in the plane, a Gaussian policy."""

    name = "nav2d"
    task_batch = Nav2DTaskBatch
    eval_stream = 0x2D6E
    obs_dim = action_dim = 2  # the position; the velocity

    def sample_goals(self, rng: np.random.Generator, num_tasks: int) -> np.ndarray:
        return sample_goals(rng, num_tasks)

    def batch(self, config: Nav2DConfig, goals: np.ndarray, seed: int) -> Nav2DTaskBatch:
        generator = torch.Generator().manual_seed(seed)
        settings = A2CSettings.of(config)
        return Nav2DTaskBatch(
            goals,
            settings,
            generator,
            config.normalize_advantages,
            config.baseline,
            config.critic_time,
        )

    # -- pictures -------------------------------------------------------------------------

    def trajectories(
        self, algo: MetaLearner, config: Nav2DConfig, num_goals: int = 3
    ) -> dict[str, Any]:
        """Mean-action paths ``{policy: {steps: [G, H + 1, 2]}}`` on the first held-out goals
        after 0, 1 and 3 inner steps (each adaptation on that goal's sampled support episodes)."""
        zero = GaussianNoise(torch.zeros(config.horizon, num_goals, 1, 2))
        paths = self.mean_action_episodes(algo, config, num_goals, PICTURE_STEPS, zero)
        return {"goals": self.test_goals(config, num_goals), "paths": paths}

    def pictures(
        self, algo: MetaLearner, config: Nav2DConfig, run_dir: Path, results: RunResults
    ) -> list[Path]:
        from rl.nav2d.plots import plot_nav2d

        trajectories = self.trajectories(algo, config)
        return [plot_nav2d(results.path(run_dir, "nav2d_trajectories.png"), trajectories)]
