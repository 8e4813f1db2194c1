"""Adaptation of many held-out tasks at once, for evaluation.

:meth:`metaopt.MetaLearner.adapt` adapts one task at a time through TorchOpt, which is exact but
costs a Python loop per task and per step. For SGD-style inner loops (MAML and Reptile with
``inner_optimizer="sgd"``, and Meta-SGD) the same update is a few lines of functional code::

    θ'_{k+1} = θ'_k − α ∘ ∇_θ L^s(θ'_k),      α a scalar (SGD) or Meta-SGD's learned rates,

and :func:`torch.func.vmap` over :func:`torch.func.grad` runs it for a whole stacked
:class:`~supervised.batch.TaskBatch` in one call per step. :func:`adaptation_curve` uses that path
when the algorithm allows it and falls back to ``algo.adapt`` (any inner optimiser) otherwise; the
tests check that both give the same numbers.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from functools import partial
from typing import Any

import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from metaopt.algorithms import MetaLearner
from supervised.batch import TaskBatch, task_loss, task_metric

__all__ = ["adaptation_curve", "adapted_parameters", "functional_rates", "loop_curve", "sgd_curve"]

Params = dict[str, torch.Tensor]


def functional_rates(algo: MetaLearner) -> float | list[torch.Tensor] | None:
    """The inner learning rates of ``algo`` if its adaptation is (learned-rate) SGD, else ``None``.

    Meta-SGD: its learned rates α (one tensor per parameter, ``model.parameters()`` order).
    MAML, first-order MAML and Reptile with SGD inner loops: the scalar ``inner_lr``.
    Any other inner optimiser (Adam): ``None``, meaning "use ``algo.adapt``".
    """
    return algo.inner_sgd_rates()


def adapted_parameters(
    model: nn.Module,
    batch: TaskBatch,
    steps: int,
    lrs: float | Sequence[torch.Tensor],
) -> Iterator[Params]:
    """Yield each task's parameters after 0, 1, ..., ``steps`` full-batch SGD steps.

    Every yielded dict maps parameter names to ``[B, *shape]`` tensors (no autograd graph).
    Parameters with ``requires_grad=False`` are left as they are, as TorchOpt does.

    Args:
        model: The network; its own parameters are not modified.
        batch: The tasks; each step uses its whole support set.
        steps: Number of steps.
        lrs: A scalar learning rate, or one rate tensor per parameter (in ``model.parameters()``
            order, each broadcastable to its parameter): Meta-SGD's α.
    """
    named = list(model.named_parameters())
    rates: dict[str, float | torch.Tensor]
    if isinstance(lrs, int | float):
        # A Python float, not a tensor: a float32 0.02 would differ from 0.02 in float64 models.
        rates = {name: float(lrs) for name, _ in named}
    else:
        if len(lrs) != len(named):
            raise ValueError(f"got {len(lrs)} learning-rate tensors for {len(named)} parameters")
        rates = {name: rate.detach() for (name, _), rate in zip(named, lrs, strict=True)}
    trainable = [name for name, p in named if p.requires_grad]
    frozen = {name: p.detach() for name, p in named if not p.requires_grad}
    buffers = {name: b.detach() for name, b in model.named_buffers()}
    kind = batch.loss

    def support_loss(params: Params, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        outputs = functional_call(model, ({**params, **frozen}, buffers), (x,))
        return task_loss(kind, outputs, y)

    step_grads = vmap(grad(support_loss))
    size = batch.num_tasks
    params = {
        name: p.detach().unsqueeze(0).expand(size, *p.shape) for name, p in named if p.requires_grad
    }
    for step in range(steps + 1):
        yield {**params, **{n: p.unsqueeze(0).expand(size, *p.shape) for n, p in frozen.items()}}
        if step == steps:
            break
        grads = step_grads(params, batch.support_x, batch.support_y)
        params = {name: params[name] - rates[name] * grads[name] for name in trainable}


def batched_outputs(model: nn.Module, params: Params, x: torch.Tensor) -> torch.Tensor:
    """Outputs of ``model`` under each task's parameters: ``params`` ``[B, ...]``, ``x`` ``[B, N, ...]``."""
    buffers = {name: b.detach() for name, b in model.named_buffers()}

    def forward(p: Params, inputs: torch.Tensor) -> torch.Tensor:
        return functional_call(model, (p, buffers), (inputs,))

    return vmap(forward)(params, x)


def sgd_curve(
    model: nn.Module,
    batch: TaskBatch,
    steps: Sequence[int],
    lrs: float | Sequence[torch.Tensor],
    *,
    chunk: int = 1000,
) -> torch.Tensor:
    """Query metric of every task after each number of SGD steps in ``steps``: ``[len(steps), B]``,
    float64.

    Tasks are adapted ``chunk`` at a time, which bounds memory for image tasks.
    """
    wanted = sorted(set(steps))
    rows: list[torch.Tensor] = []
    for start in range(0, batch.num_tasks, chunk):
        part = batch.select(slice(start, start + chunk))
        found: dict[int, torch.Tensor] = {}
        for step, params in enumerate(adapted_parameters(model, part, max(wanted), lrs)):
            if step in wanted:
                with torch.no_grad():
                    outputs = batched_outputs(model, params, part.query_x)
                    found[step] = vmap(partial(task_metric, part.loss))(outputs, part.query_y)
        rows.append(torch.stack([found[s] for s in steps]))
    return torch.cat(rows, dim=1).to(torch.float64)


def loop_curve(algo: MetaLearner, batch: TaskBatch, steps: Sequence[int]) -> torch.Tensor:
    """Same as :func:`sgd_curve`, task by task through ``algo.adapt`` (any inner optimiser)."""
    evaluation = batch.select(
        slice(None)
    )  # fresh tasks: adaptation must not move the caller's cursors
    values = torch.empty(len(steps), evaluation.num_tasks, dtype=torch.float64)
    for j, task in enumerate(evaluation):
        for i, step in enumerate(steps):
            with algo.adapt(task, steps=step) as model:
                values[i, j] = task.query_metric(model)
    return values


def adaptation_curve(
    algo: MetaLearner, batch: TaskBatch, steps: Sequence[int], *, chunk: int = 1000
) -> torch.Tensor:
    """Query metric after each number of ``algo``'s own adaptation steps: ``[len(steps), B]``.

    Uses the batched path when ``algo`` adapts by (learned-rate) SGD and the batch is full-batch,
    ``algo.adapt`` otherwise.
    """
    lrs = functional_rates(algo)
    if lrs is None or batch.minibatch is not None:
        return loop_curve(algo, batch, steps)
    return sgd_curve(algo.model, batch, steps, lrs, chunk=chunk)


def describe_adaptation(algo: MetaLearner) -> dict[str, Any]:
    """How ``algo`` adapts at evaluation, for eval.json."""
    return algo.describe()
