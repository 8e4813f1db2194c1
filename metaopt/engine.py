"""The vectorised engine: every task of a meta-batch adapted at once, one parameter set per task.

The loop engine (:mod:`metaopt.algorithms`) adapts one task at a time inside
:func:`metaopt.isolated`, exactly as the papers write it. This engine holds the parameters as a
dict of tensors with a leading task axis, ``θ_b = θ.expand(B, ...)``, evaluates all tasks'
losses in one call through :func:`torch.func.functional_call` vmapped over that axis, and takes
the inner steps with TorchOpt's functional optimisers (``inplace=False``).

Per-task gradients come from one backward pass: task *b*'s loss depends only on ``θ_b``, so the
gradient of ``Σ_b L_b`` with respect to the stacked ``θ_b`` is, row by row, each task's own
gradient. Because ``θ_b`` is a view of θ, the outer backward of ``Σ_b w·L^q_b(θ'_b)`` sums the
per-task meta-gradients into ``θ.grad``; first-order MAML takes the inner gradients without a
graph, so ``∂θ'_b/∂θ = I`` as in the loop engine.

A meta-batch is vectorisable when it implements :class:`metaopt.task.BatchedTasks`; the
algorithms choose this engine for such batches by default (``engine="auto"``).
"""

from __future__ import annotations

from typing import Any

import torch
import torchopt
from torch import nn
from torchopt.base import GradientTransformation

from metaopt.task import BatchedForward, BatchedTasks, is_batched

__all__ = ["BatchedParameters", "batched_forward", "can_vectorise", "inner_loop"]

BatchedParameters = dict[str, torch.Tensor]


def can_vectorise(model: nn.Module, tasks: object) -> str | None:
    """``None`` when the vectorised engine can run ``tasks`` on ``model``, else the reason."""
    if not is_batched(tasks):
        return (
            f"the tasks ({type(tasks).__name__}) do not implement BatchedTasks "
            "(support_losses(forward, step) and query_losses(forward))"
        )
    buffers = [name for name, _ in model.named_buffers()]
    if buffers and model.training:
        # BatchNorm in training mode updates running statistics in place, which cannot be
        # vectorised over tasks; use track_running_stats=False or the loop engine.
        return f"the model has buffers updated in training mode ({', '.join(buffers[:3])})"
    return None


def batched_forward(
    model: nn.Module, params: BatchedParameters, fixed: dict[str, torch.Tensor]
) -> BatchedForward:
    """``forward(x)`` with ``x`` stacked ``[B, ...]``: task b's parameters applied to ``x[b]``.

    Args:
        model: The module whose ``forward`` is called functionally.
        params: Trainable parameters, each with a leading task axis ``[B, ...]``.
        fixed: Frozen parameters and buffers, shared by all tasks.
    """

    def one_task(task_params: dict[str, torch.Tensor], x: Any) -> Any:
        return torch.func.functional_call(model, {**fixed, **task_params}, (x,), strict=False)

    vectorised = torch.vmap(one_task, in_dims=(0, 0), randomness="different")
    return lambda x: vectorised(params, x)


def inner_loop(
    model: nn.Module,
    tasks: BatchedTasks,
    transform: GradientTransformation,
    steps: int,
    *,
    create_graph: bool,
) -> tuple[BatchedParameters, dict[str, torch.Tensor], torch.Tensor | None]:
    """Adapt every task of ``tasks`` by ``steps`` differentiable steps of ``transform``.

    Returns:
        The adapted parameters ``{name: [B, ...]}``, the fixed tensors (frozen parameters and
        buffers) and the support losses at θ (``[B]``, detached; ``None`` when ``steps == 0``).
    """
    num_tasks = len(tasks)
    named = list(model.named_parameters())
    names = [name for name, p in named if p.requires_grad]
    fixed: dict[str, torch.Tensor] = {name: p for name, p in named if not p.requires_grad}
    fixed.update(model.named_buffers())
    flat = tuple(p.expand(num_tasks, *p.shape) for _, p in named if p.requires_grad)
    state = transform.init(flat)
    before = None
    for step in range(steps):
        forward = batched_forward(model, dict(zip(names, flat, strict=True)), fixed)
        losses = check_losses(tasks.support_losses(forward, step), num_tasks, "support_losses")
        if before is None:
            before = losses.detach()
        grads = torch.autograd.grad(losses.sum(), flat, create_graph=create_graph)
        updates, state = transform.update(grads, state, params=flat, inplace=False)
        flat = tuple(torchopt.apply_updates(flat, updates, inplace=False))
    return dict(zip(names, flat, strict=True)), fixed, before


def check_losses(losses: object, num_tasks: int, what: str) -> torch.Tensor:
    """Per-task losses must be a tensor of shape ``[B]``."""
    if not isinstance(losses, torch.Tensor):
        raise TypeError(f"{what} returned {type(losses).__name__}, expected a Tensor of shape [B]")
    if tuple(losses.shape) != (num_tasks,):
        raise ValueError(
            f"{what} returned a tensor of shape {tuple(losses.shape)}; expected ({num_tasks},), "
            "one loss per task"
        )
    return losses
