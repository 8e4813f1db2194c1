"""2-D navigation for the core: T goals × N episodes simulated at once, and the meta-batch.

`Nav2DDynamics` steps `rl.nav2d.env.Nav2DEnv`'s dynamics for every (goal, episode) pair at once,
for `rl.continuous.rollout`; `Nav2DTaskBatch` is a meta-batch of goals (`rl.task.RLTaskBatch`)
that samples with it and scores with a Gaussian policy (`rl.continuous.GaussianScorer`).
"""

from __future__ import annotations

import numpy as np
import torch

from rl.continuous import (
    ContinuousTrajectories,
    GaussianNoise,
    GaussianPolicyFn,
    GaussianScorer,
    rollout,
)
from rl.nav2d.env import GOAL_RADIUS, MAX_SPEED
from rl.task import A2CSettings, RLTaskBatch

__all__ = ["Nav2DDynamics", "Nav2DTaskBatch"]


class Nav2DDynamics:
    """T goals × N episodes of `rl.nav2d.env.Nav2DEnv` at once (`rl.continuous.Dynamics`).

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
