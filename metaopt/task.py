"""What the core needs from a task: two losses, computed with whatever model it is handed."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

__all__ = ["BatchedForward", "BatchedTasks", "Task", "is_batched", "is_task"]

#: ``forward(x)``: ``x`` has a leading task axis ``[B, ...]``; task b's parameters are applied to
#: ``x[b]``. Outputs keep the task axis (a tuple of outputs, for a model that returns several).
BatchedForward = Callable[[Any], Any]


@runtime_checkable
class Task(Protocol):
    """One task of a meta-batch.

    The core calls [`support_loss`][metaopt.Task.support_loss] once per inner step and
    [`query_loss`][metaopt.Task.query_loss] once after adaptation, each time with the model as it is
    *then* (adapted parameters in place). A supervised task evaluates stored batches; a
    reinforcement-learning task samples fresh trajectories with the model it is given. The core
    never looks at data.

    Both methods return a scalar tensor that is differentiable with respect to the model's
    parameters.
    """

    def support_loss(self, model: nn.Module) -> torch.Tensor:
        """Loss the inner loop descends (the task's training data)."""
        ...

    def query_loss(self, model: nn.Module) -> torch.Tensor:
        """Loss of the adapted model that the outer loop descends (the task's test data)."""
        ...


@runtime_checkable
class BatchedTasks(Protocol):
    """A meta-batch whose tasks can be evaluated all at once: the vectorised engine's input.

    The engine holds one set of parameters per task and hands the batch a ``forward`` that
    applies task b's parameters to ``x[b]`` (see `BatchedForward`). The batch returns one
    loss per task, shape ``[B]``; task b's loss must depend on ``forward``'s outputs for index b
    only. It is still a sequence of [`Task`][metaopt.Task] objects for the loop engine, and both
    engines must compute the same losses.
    """

    def __len__(self) -> int: ...

    def support_losses(self, forward: BatchedForward, step: int | None) -> torch.Tensor:
        """Support losses ``[B]`` at inner step ``step`` (0-based; ``None``: the whole support
        set, for the "after adaptation" metric)."""
        ...

    def query_losses(self, forward: BatchedForward) -> torch.Tensor:
        """Query losses ``[B]`` of the adapted parameters."""
        ...


# Structural checks, equivalent to isinstance() with the protocols above (which, being
# runtime-checkable Protocols, re-inspect the class on every call: tens of microseconds, paid for
# every task of every meta-iteration).
def is_task(obj: object) -> bool:
    """Whether ``obj`` has the [`Task`][metaopt.Task] methods."""
    return callable(getattr(obj, "support_loss", None)) and callable(
        getattr(obj, "query_loss", None)
    )


def is_batched(obj: object) -> bool:
    """Whether ``obj`` has the [`BatchedTasks`][metaopt.BatchedTasks] methods."""
    return all(
        callable(getattr(obj, name, None)) for name in ("__len__", "support_losses", "query_losses")
    )
