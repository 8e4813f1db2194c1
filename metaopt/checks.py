"""Checks of what users hand the algorithms: tasks, meta-batches, scales and losses, each
refused with a message that names the task and what was wrong."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from metaopt.options import check_real
from metaopt.task import Task, is_batched, is_task


def check_task(task: object, index: int) -> None:
    if not is_task(task):
        raise TypeError(
            f"task {index} ({type(task).__name__}) does not implement the Task protocol: "
            "it needs support_loss(model) and query_loss(model)"
        )


def check_tasks(tasks: Sequence[Task], scale: float | None) -> tuple[Sequence[Task], float]:
    """The validated meta-batch (a list, unless it is a BatchedTasks) and each task's weight."""
    if is_task(tasks):
        raise TypeError("tasks must be a sequence of tasks; wrap a single task in a list")
    if not is_batched(tasks):
        tasks = list(tasks)
    if len(tasks) == 0:
        raise ValueError("tasks is empty: a meta-batch needs at least one task")
    if scale is not None:
        check_real("scale", scale, low=0, low_open=True)
    return tasks, 1.0 / len(tasks) if scale is None else float(scale)


def scalar_loss(loss: object, what: str, index: int, *, grad: bool = True) -> torch.Tensor:
    if not isinstance(loss, torch.Tensor):
        raise TypeError(f"{what} of task {index} returned {type(loss).__name__}, expected a Tensor")
    if loss.numel() != 1 or loss.dim() > 1:
        raise ValueError(
            f"{what} of task {index} returned a tensor of shape {tuple(loss.shape)}; "
            "expected a scalar (reduce it, e.g. with .mean())"
        )
    if grad and not loss.requires_grad:
        raise ValueError(
            f"{what} of task {index} does not depend on the model's parameters "
            "(its result has requires_grad=False)"
        )
    return loss.reshape(())


def check_step_weights(
    weights: Sequence[float] | None, steps: int, outer: str, replayed: bool
) -> tuple[float, ...] | None:
    """A multi-step loss's weights (``None``: none), one per inner step, for a query-gradient
    rule on an engine that keeps every step's state (``replayed``: the compiled engine or
    checkpointed unrolling, which do not)."""
    if weights is None:
        return None
    if len(weights) != steps:
        raise ValueError(f"step_weights has {len(weights)} weights for {steps} inner steps")
    if outer != "query-gradient":
        raise ValueError(
            f"step_weights (a multi-step loss) needs the query-gradient rule, not {outer}"
        )
    if replayed:
        raise ValueError(
            "step_weights (a multi-step loss) runs on the loop and vectorised engines, "
            "without unroll_checkpoints"
        )
    return tuple(weights)
