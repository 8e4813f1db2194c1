"""What the core needs from a task: two losses, computed with whatever model it is handed."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch
from torch import nn

__all__ = ["Task"]


@runtime_checkable
class Task(Protocol):
    """One task of a meta-batch.

    The core calls :meth:`support_loss` once per inner step and :meth:`query_loss` once after
    adaptation, each time with the model as it is *then* (adapted parameters in place). A
    supervised task evaluates stored batches; a reinforcement-learning task samples fresh
    trajectories with the model it is given. The core never looks at data.

    Both methods return a scalar tensor that is differentiable with respect to the model's
    parameters.
    """

    def support_loss(self, model: nn.Module) -> torch.Tensor:
        """Loss the inner loop descends (the task's training data)."""
        ...

    def query_loss(self, model: nn.Module) -> torch.Tensor:
        """Loss of the adapted model that the outer loop descends (the task's test data)."""
        ...
