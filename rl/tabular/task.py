"""Tabular-MDP tasks for the core: an `rl.task.RLTaskBatch` with the tabular sampler.

An `MDPTask` (an `rl.task.RLTask`) implements [`metaopt.task.Task`][metaopt.Task]: its support and
query losses sample fresh episodes in its MDP (`rl.tabular.sampler`) with the policy they are
handed. An `MDPTaskBatch` is a meta-batch of them and also implements
[`metaopt.task.BatchedTasks`][metaopt.BatchedTasks], so the vectorised engine adapts all its tasks
at once; both engines sample exactly the same episodes (see `rl.task`).
"""

from __future__ import annotations

import torch

from rl.sampling import PolicyFn
from rl.tabular.losses import TabularScorer
from rl.tabular.mdp import TabularMDPBatch
from rl.tabular.sampler import MDPTensors, SamplingNoise, Trajectories, policy_table, simulate
from rl.task import A2CSettings, RLTask, RLTaskBatch

__all__ = ["MDPTask", "MDPTaskBatch"]

#: The tabular family's name for its tasks.
MDPTask = RLTask


class MDPTaskBatch(RLTaskBatch):
    """A meta-batch of tabular-MDP tasks (`RLTaskBatch` with the tabular sampler).

    Args:
        mdps: The tasks' dynamics and rewards.
        settings: Sampling and loss settings.
        generator: Source of all sampling randomness.
    """

    def __init__(
        self, mdps: TabularMDPBatch, settings: A2CSettings, generator: torch.Generator
    ) -> None:
        self.mdps = mdps
        self.tensors = MDPTensors.from_mdps(mdps)
        super().__init__(len(mdps), settings, generator, TabularScorer(self.tensors.num_states))

    def draw_noise(self) -> SamplingNoise:
        s = self.settings
        means = self.tensors.reward_means
        return SamplingNoise.draw(
            self.generator, s.horizon, len(self), s.trajectories, means.dtype, means.device
        )

    def simulate(
        self, policy: PolicyFn, noise: SamplingNoise, index: int | None = None
    ) -> Trajectories:
        if self.settings.reward_noise != 1.0:
            noise = noise._replace(normal=noise.normal * self.settings.reward_noise)
        tensors = self.tensors if index is None else self.tensors.select(index)
        return simulate(policy, tensors, noise)

    def subset(self, indices: slice) -> MDPTaskBatch:
        mdps = TabularMDPBatch(self.mdps.transitions[indices], self.mdps.reward_means[indices])
        return MDPTaskBatch(mdps, self.settings, self.generator)

    def mean_entropy(self, policy: PolicyFn) -> float:
        return _mean_entropy(policy, self.tensors)


def _mean_entropy(policy: PolicyFn, tensors: MDPTensors) -> float:
    with torch.no_grad():
        means = tensors.reward_means
        logits, _ = policy_table(
            policy, tensors.num_tasks, tensors.num_states, means.dtype, means.device
        )
        log_p = torch.log_softmax(logits, dim=-1)
        return -(log_p.exp() * log_p).sum(-1).mean().item()
