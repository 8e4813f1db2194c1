"""``metaopt train cheetah-vel`` and ``cheetah-dir``: MAML-TRPO on HalfCheetah (MuJoCo).

The families are goal-conditioned ones (`rl.goal_family.GoalFamily`, as nav2d's: MAML-TRPO by
default, the linear feature baseline, the pretrained and random-initialisation baselines paired
per goal in ``eval.json``) with HalfCheetah's tasks: goals from `rl.cheetah.env.sample_goals`,
episodes sampled by `rl.cheetah.sampler.CheetahDynamics`, a 17 → 6 Gaussian policy. Their settings are
`rl.cheetah.config.CheetahConfig` (pytorch-maml-rl's ``halfcheetah-vel.yaml``). A sampling
phase's randomness is `CheetahNoise`: the policy noise and each episode's start-state seed,
both drawn from the batch's generator; a task's episodes depend only on its slice of them and
on the policy. At the default 20 episodes per goal a torchrun shard samples the episodes the
whole batch samples, bit for bit (`tests/test_rl_cheetah.py`); with 2 or 3 episodes per goal,
or a task sampled alone by the loop engine, the float32 policy forward rounds differently with
the batch's shape, and 100 steps of the cheetah's dynamics amplify a last-bit difference into
another episode from the same distribution (measured: rewards 0.9 apart). After the first outer
step, runs on different process counts part the same way: the all-reduced meta-gradient rounds
differently from one process's sum (`metaopt scale cheetah-vel --check-iterations 1` checks the
first iteration). The same run repeated, or resumed, samples the same episodes.

``cheetah_velocity.png`` is the picture of a run: the torso's forward velocity over an episode
of the mean action, before and after one inner step, for a few held-out goals, of the
meta-learned, pretrained and randomly initialised policies.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, NamedTuple

import mujoco
import numpy as np
import torch

from metaopt.algorithms import MetaLearner
from metaopt.training.family import RunResults
from rl.cheetah.config import CHEETAH_DIR, CHEETAH_VEL
from rl.cheetah.env import GoalCheetahEnv, sample_goals
from rl.cheetah.sampler import CheetahDynamics
from rl.config import Nav2DConfig
from rl.continuous import (
    ContinuousTrajectories,
    GaussianNoise,
    GaussianPolicyFn,
    GaussianScorer,
    rollout,
)
from rl.goal_family import GoalFamily
from rl.task import A2CSettings, RLTaskBatch

__all__ = ["CheetahDirFamily", "CheetahNoise", "CheetahTaskBatch", "CheetahVelFamily"]

#: HalfCheetah-v5's observation and action sizes.
OBS_DIM, ACTION_DIM = 17, 6
#: Where HalfCheetah-v5's observation (``qpos[1:]``, then ``qvel``) holds the torso's forward
#: velocity, ``qvel[0]``.
FORWARD_VELOCITY = 8
#: Inner steps drawn in the velocity picture.
PICTURE_STEPS = (0, 1)


class CheetahNoise(NamedTuple):
    """One sampling phase's randomness: ``normal`` ``[H, T, N, 6]`` (the policy's noise) and
    ``seeds`` ``[1, T, N]`` (each episode's start state; axis 1 is the task, as ``normal``'s)."""

    normal: torch.Tensor
    seeds: torch.Tensor


class CheetahTaskBatch(RLTaskBatch):
    """A meta-batch of HalfCheetah goals for the core (see `rl.task.RLTaskBatch`).

    Args:
        task: ``vel`` or ``dir``.
        goals: ``[T]`` goals.
        settings: Sampling and loss settings.
        generator: Source of all sampling randomness.
        normalize_advantages: Standardise the A2C policy term's advantages per task.
        baseline: What the advantages subtract: ``critic`` or ``linear``.
        data_pool: The simulations' ``MjData``, reused across sampling calls (and batches that
            share the list; `rl.cheetah.sampler.CheetahDynamics`).
    """

    def __init__(
        self,
        task: str,
        goals: np.ndarray,
        settings: A2CSettings,
        generator: torch.Generator,
        normalize_advantages: bool = True,
        baseline: str = "linear",
        data_pool: list[mujoco.MjData] | None = None,
    ) -> None:
        self.task = task
        self.data_pool = [] if data_pool is None else data_pool
        self.goals = np.asarray(goals, dtype=np.float64)
        if self.goals.ndim != 1:
            raise ValueError(f"goals must have shape [T], got {self.goals.shape}")
        self.normalize_advantages = normalize_advantages
        self.baseline = baseline
        scorer = GaussianScorer(normalize_advantages, baseline, settings.gamma)
        super().__init__(len(self.goals), settings, generator, scorer)

    def draw_noise(self) -> CheetahNoise:
        s, t = self.settings, len(self)
        normal = GaussianNoise.draw(self.generator, s.horizon, t, s.trajectories, ACTION_DIM)
        seeds = torch.randint(
            0, 2**31 - 1, (1, t, s.trajectories), generator=self.generator, dtype=torch.int64
        )
        return CheetahNoise(normal.normal, seeds)

    def simulate(
        self, policy: GaussianPolicyFn, noise: CheetahNoise, index: int | None = None
    ) -> ContinuousTrajectories:
        goals = self.goals if index is None else self.goals[index : index + 1]
        seeds = noise.seeds[0].numpy()
        dynamics = CheetahDynamics(self.task, goals, seeds, data_pool=self.data_pool)
        return rollout(policy, dynamics, GaussianNoise(noise.normal))

    def subset(self, indices: slice) -> CheetahTaskBatch:
        return CheetahTaskBatch(
            self.task,
            self.goals[indices],
            self.settings,
            self.generator,
            self.normalize_advantages,
            self.baseline,
            self.data_pool,
        )


class _CheetahFamily(GoalFamily):
    """A goal-conditioned family with HalfCheetah's tasks (see the module docstring)."""

    task: ClassVar[str] = ""
    task_batch = CheetahTaskBatch
    eval_stream = 0xC4EE
    obs_dim, action_dim = OBS_DIM, ACTION_DIM

    def __init__(self) -> None:
        super().__init__()
        self._data_pool: list[mujoco.MjData] = []  # every batch's simulations, made once

    def sample_goals(self, rng: np.random.Generator, num_tasks: int) -> np.ndarray:
        return sample_goals(rng, self.task, num_tasks)

    def batch(self, config: Nav2DConfig, goals: np.ndarray, seed: int) -> CheetahTaskBatch:
        generator = torch.Generator().manual_seed(seed)
        return CheetahTaskBatch(
            self.task,
            goals,
            A2CSettings.of(config),
            generator,
            config.normalize_advantages,
            config.baseline,
            self._data_pool,
        )

    # -- pictures -------------------------------------------------------------------------

    def velocities(
        self, algo: MetaLearner, config: Nav2DConfig, num_goals: int = 3
    ) -> dict[str, Any]:
        """The torso's forward velocity ``{policy: {steps: [G, H + 1]}}`` over one episode of
        the mean action on each of the first held-out goals, after 0 and 1 inner steps (each
        adaptation on that goal's sampled support episodes), and each goal's episode ``seeds``
        ``[G]`` (its start state is ``HalfCheetah-v5``'s ``reset(seed=...)``)."""
        # One episode per goal, from the same start states for every curve, without policy noise.
        noise = self.test_batch(config, num_goals).draw_noise()
        mean = CheetahNoise(torch.zeros_like(noise.normal[:, :, :1]), noise.seeds[:, :, :1])
        episodes = self.mean_action_episodes(algo, config, num_goals, PICTURE_STEPS, mean)
        curves = {
            policy: {k: observed[..., FORWARD_VELOCITY] for k, observed in by_steps.items()}
            for policy, by_steps in episodes.items()
        }
        goals = self.test_goals(config, num_goals)
        return {
            "task": self.task,
            "goals": goals,
            "dt": GoalCheetahEnv(self.task, goal=goals[0]).dt,
            "seeds": mean.seeds[0, :, 0].numpy(),
            "velocities": curves,
        }

    def pictures(
        self, algo: MetaLearner, config: Nav2DConfig, run_dir: Path, results: RunResults
    ) -> list[Path]:
        from rl.cheetah.plots import plot_velocities

        velocities = self.velocities(algo, config)
        return [plot_velocities(results.path(run_dir, "cheetah_velocity.png"), velocities)]


class CheetahVelFamily(_CheetahFamily, options=CHEETAH_VEL):
    """HalfCheetah running at a goal velocity in [0, 2]."""

    name = "cheetah-vel"
    task = "vel"


class CheetahDirFamily(_CheetahFamily, options=CHEETAH_DIR):
    """HalfCheetah running forwards or backwards."""

    name = "cheetah-dir"
    task = "dir"
