"""The actor-critic network of TorchOpt's MAML-RL example: an MLP torso with a categorical policy
and a value head."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import torch
from torch import nn

from metaopt.nn import ACTIVATIONS, mlp
from rl.config import ACTIVATION_NAMES

__all__ = ["CategoricalMLPPolicy", "torsos"]

assert tuple(ACTIVATIONS) == ACTIVATION_NAMES  # the names rl.config checks, without torch


class CategoricalMLPPolicy(nn.Module):
    """Observation -> (action logits, state value): ReLU MLP torso, policy and value heads.

    The seed (TorchOpt's MAML-RL example, after Finn et al. 2017's RL experiments) shares one
    torso of two hidden layers of 32 units between the heads. With ``shared_torso=False`` the
    critic has its own torso of the same widths, so the value loss cannot move the policy's
    parameters (Finn et al. fit the baseline separately from the policy). Works on any leading
    dimensions: ``[..., S] -> ([..., A], [...])``, the policy signature of
    `rl.tabular.sampler.sample_trajectories`.

    Args:
        num_states: Observation size S (one-hot states).
        num_actions: A.
        hidden_sizes: Widths of the torso's hidden layers (may be empty: linear heads).
        shared_torso: One torso for both heads (the MAML-RL example's), or one each.
    """

    #: What ``--adapt anil`` adapts (`metaopt.algorithms.subset.anil_heads`): the policy's and
    #: the critic's last layers.
    anil_heads: ClassVar[tuple[str, ...]] = ("policy_head", "value_head")

    def __init__(
        self,
        num_states: int,
        num_actions: int,
        hidden_sizes: Sequence[int] = (32, 32),
        shared_torso: bool = True,
    ) -> None:
        super().__init__()
        self.torso, self.value_torso, width = torsos(num_states, hidden_sizes, shared_torso)
        self.policy_head = nn.Linear(width, num_actions)
        self.value_head = nn.Linear(width, 1)

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        obs = obs.to(self.policy_head.weight.dtype)  # the samplers follow the policy's dtype
        features = self.torso(obs)
        critic = features if self.value_torso is None else self.value_torso(obs)
        return self.policy_head(features), self.value_head(critic).squeeze(-1)


def torsos(
    inputs: int, hidden_sizes: Sequence[int], shared_torso: bool, activation: str = "relu"
) -> tuple[nn.Sequential, nn.Sequential | None, int]:
    """An actor-critic's torsos: the policy's `metaopt.nn.mlp` of ``hidden_sizes`` (empty: the
    identity), the critic's own one (``None`` when the critic shares the policy's) and their
    output width."""
    torso = mlp(inputs, hidden_sizes, activation=activation)
    critic = None if shared_torso else mlp(inputs, hidden_sizes, activation=activation)
    return torso, critic, hidden_sizes[-1] if hidden_sizes else inputs
