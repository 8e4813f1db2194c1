"""``metaopt train cheetah-vel`` and ``cheetah-dir``: MAML-TRPO on HalfCheetah (MuJoCo).

The families are nav2d's (`rl.nav2d_family.Nav2DFamily`: MAML-TRPO by default, the linear
feature baseline, the pretrained and random-initialisation baselines paired per goal in
``eval.json``) with HalfCheetah's tasks: goals from `rl.cheetah.env.sample_goals`, episodes
sampled by `rl.cheetah.sampler.CheetahDynamics`, a 17 → 6 Gaussian policy. Their settings are
`rl.cheetah.config.CheetahConfig` (pytorch-maml-rl's ``halfcheetah-vel.yaml``). A sampling
phase's randomness is `CheetahNoise`: the policy noise and each episode's start-state seed,
both drawn from the batch's generator; a task's episodes depend only on its slice of them and
on the policy. Unlike nav2d's, they are not the same episodes when a task is sampled alone (the
loop engine, a torchrun shard) as when the whole batch is: the float32 policy forward rounds
differently with the batch's shape, and 100 steps of the cheetah's dynamics amplify a last-bit
difference into another episode from the same distribution (measured: rewards 0.9 apart). The
same run repeated, or resumed, samples the same episodes.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar, NamedTuple

import mujoco
import numpy as np
import torch
from torch import nn

from metaopt.algorithms import MetaLearner
from metaopt.training.family import RunResults, TrainConfig
from metaopt.trust_region import TrustRegionSettings
from rl.cheetah.config import CHEETAH_DIR, CHEETAH_VEL, CheetahConfig
from rl.cheetah.env import sample_goals
from rl.cheetah.sampler import CheetahDynamics
from rl.config import Nav2DConfig
from rl.continuous import (
    ContinuousTrajectories,
    GaussianMLPPolicy,
    GaussianNoise,
    GaussianPolicyFn,
    GaussianScorer,
    rollout,
)
from rl.family import config_as
from rl.nav2d_family import Nav2DFamily
from rl.task import A2CSettings, RLTaskBatch
from rl.trust_region import MetaPolicyRegion

__all__ = ["CheetahDirFamily", "CheetahNoise", "CheetahTaskBatch", "CheetahVelFamily"]

#: HalfCheetah-v5's observation and action sizes.
OBS_DIM, ACTION_DIM = 17, 6
_EVAL_STREAM = 0xC4EE


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


class _CheetahFamily(Nav2DFamily):
    """nav2d's family with HalfCheetah's tasks (see the module docstring)."""

    task: ClassVar[str] = ""

    def __init__(self) -> None:
        super().__init__()
        self._data_pool: list[mujoco.MjData] = []  # every batch's simulations, made once

    def make_model(self, config: TrainConfig) -> nn.Module:
        config = config_as(config, CheetahConfig, f"the {self.name} family")
        return GaussianMLPPolicy(
            OBS_DIM,
            ACTION_DIM,
            config.hidden_sizes,
            config.init_log_std,
            config.shared_torso,
            config.critic_time,
            config.activation,
        )

    def batch(self, config: Nav2DConfig, goals: np.ndarray, seed: int) -> CheetahTaskBatch:  # type: ignore[override]
        generator = torch.Generator().manual_seed(seed)
        return CheetahTaskBatch(
            self.task,
            goals,
            config.a2c_settings(),
            generator,
            config.normalize_advantages,
            config.baseline,
            self._data_pool,
        )

    def sample_tasks(
        self, config: TrainConfig, rng: np.random.Generator, num_tasks: int
    ) -> CheetahTaskBatch:
        config = config_as(config, CheetahConfig, f"the {self.name} family")
        goals = sample_goals(rng, self.task, num_tasks)
        return self.batch(config, goals, int(rng.integers(2**62)))

    def test_goals(self, config: Nav2DConfig, num_tasks: int) -> np.ndarray:
        """The first ``num_tasks`` held-out goals of ``config.eval_seed`` (a fixed set)."""
        rng = np.random.default_rng([_EVAL_STREAM, config.eval_seed])
        return sample_goals(rng, self.task, num_tasks)

    def trust_region(
        self, algo: MetaLearner, config: TrainConfig, tasks: Sequence[Any]
    ) -> tuple[MetaPolicyRegion, TrustRegionSettings]:
        """MAML-TRPO's surrogate and divergence on the meta-batch (`rl.trust_region`)."""
        if not isinstance(tasks, CheetahTaskBatch):
            raise TypeError(
                f"{self.name}'s trust region needs a CheetahTaskBatch, got {type(tasks)}"
            )
        settings = config_as(config, CheetahConfig, self.name).trust_region_settings()
        return MetaPolicyRegion(algo, tasks), settings

    def plot(
        self, algo: MetaLearner, config: TrainConfig, run_dir: Path, results: RunResults
    ) -> list[Path]:
        return self.return_plots(config, run_dir, results)


class CheetahVelFamily(_CheetahFamily, options=CHEETAH_VEL):
    """HalfCheetah running at a goal velocity in [0, 2]."""

    name = "cheetah-vel"
    task = "vel"


class CheetahDirFamily(_CheetahFamily, options=CHEETAH_DIR):
    """HalfCheetah running forwards or backwards."""

    name = "cheetah-dir"
    task = "dir"
