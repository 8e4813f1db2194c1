"""The vectorised engine: every task of a meta-batch adapted at once, one parameter set per task.

The loop engine (`metaopt.algorithms`) adapts one task at a time inside
[`metaopt.isolated`][metaopt.isolated], exactly as the papers write it. This engine holds the
parameters as a dict of tensors with a leading task axis, ``θ_b = θ.expand(B, ...)``, evaluates all
tasks' losses in one call through `torch.func.functional_call` vmapped over that axis, and takes
the inner steps with the same functional optimisers as the loop engine (``inplace=False``).

The inner loop itself and the meta-iteration are `metaopt.batched`'s; this module decides what
the engine can run and how a model's tensors reach ``functional_call``.

The engine gives the loop engine's answer or is not used
([`can_vectorise`][metaopt.engine.can_vectorise] says why):

* a parameter or buffer registered in several places (a submodule used twice, tied weights) is
  handed to every place it is registered, so the model is never re-tied or left altered;
* a parameter the support loss does not use gets no inner update, as in the loop engine;
* buffers of modules in training mode (BatchNorm's running statistics) get one copy per task,
  updated during the task's adaptation and dropped afterwards, as the loop engine restores them;
* modules whose batched form is wrong or missing are refused up front: recurrent modules (fused
  kernels without a batching rule), embeddings with ``padding_idx`` (torch's batched backward
  masks the padding row of the first task only) or sparse gradients, ``EmbeddingBag``, and
  BatchNorm with a cumulative average (``momentum=None``) updating its statistics.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

import torch
from torch import nn

from metaopt.nn import at_inner_step
from metaopt.options import BATCH_NORM_MODES
from metaopt.task import BatchedForward, is_batched

__all__ = [
    "BATCH_NORM_MODES",
    "Adapted",
    "BatchedParameters",
    "batch_norm_mode",
    "batched_forward",
    "can_vectorise",
    "is_batching_failure",
    "unvectorisable_module",
]

BatchedParameters = dict[str, torch.Tensor]


_BatchNorm = nn.modules.batchnorm._BatchNorm


def batch_norm_mode(model: nn.Module, mode: str) -> AbstractContextManager[None]:
    """Make ``model``'s BatchNorm layers behave as ``mode`` (see `BATCH_NORM_MODES`).

    ``"running"`` leaves the modules as they are: an empty context, cheap enough for the compiled
    engine's every call."""
    if mode not in BATCH_NORM_MODES:
        raise ValueError(f"batch_norm must be one of {', '.join(BATCH_NORM_MODES)}; got {mode!r}")
    return nullcontext() if mode == "running" else _batch_statistics(model)


@contextmanager
def _batch_statistics(model: nn.Module) -> Iterator[None]:
    """Every BatchNorm layer of ``model`` normalises with its batch's statistics (``"batch"``)."""
    layers = [m for m in model.modules() if isinstance(m, _BatchNorm)]
    saved = [(m, m.training, m.track_running_stats) for m in layers]
    try:
        for m in layers:  # training without tracking: batch statistics, buffers untouched
            m.training, m.track_running_stats = True, False
        yield
    finally:
        for m, training, track in saved:
            m.training, m.track_running_stats = training, track


def unvectorisable_module(model: nn.Module, batch_norm: str = "running") -> str | None:
    """``None`` when the vectorised engine computes exactly what the loop engine does on every
    submodule of ``model``; else ``"name (Type): reason"`` for the first that it would not."""
    for name, module in model.named_modules():
        where = f"{name or 'the model'} ({type(module).__name__})"
        if isinstance(module, nn.RNNBase | nn.RNNCellBase):
            return (
                f"{where}: recurrent modules run fused kernels (aten::lstm, gru, rnn and their "
                "cells) that torch.func.vmap has no exact batching rule for"
            )
        if isinstance(module, nn.Embedding | nn.EmbeddingBag) and module.sparse:
            return f"{where}: sparse gradients (sparse=True) cannot be batched over tasks"
        if isinstance(module, nn.EmbeddingBag):
            return f"{where}: EmbeddingBag runs on vmap's slow per-task fallback"
        if isinstance(module, nn.Embedding) and module.padding_idx is not None:
            return (
                f"{where}: with padding_idx, torch's batched embedding backward masks the padding "
                "row of the first task only, so the other tasks would adapt it"
            )
        if (
            isinstance(module, _BatchNorm)
            and batch_norm == "running"
            and module.training
            and module.track_running_stats
            and module.momentum is None
        ):
            return (
                f"{where}: a cumulative running average (momentum=None) reads its batch count "
                "as a Python number, which cannot differ between tasks"
            )
    return None


def can_vectorise(model: nn.Module, tasks: object, batch_norm: str = "running") -> str | None:
    """``None`` when the vectorised engine can run ``tasks`` on ``model``, else the reason."""
    if not is_batched(tasks):
        return (
            f"the tasks ({type(tasks).__name__}) do not implement BatchedTasks "
            "(support_losses(forward, step) and query_losses(forward))"
        )
    return unvectorisable_module(model, batch_norm)


class _Layout:
    """How one model's tensors reach ``functional_call`` under ``vmap``, from one walk over its
    modules.

    ``slots``: every place a tensor is registered, once, as ``(path, canonical name)``; the
    canonical name is the tensor's first name in ``named_parameters()`` / ``named_buffers()``
    (the first visit of a module comes in the same order with and without duplicates). A
    submodule registered under two names is one place (its attribute is set once); tied weights
    in two modules are two places that receive the same tensor. Handing every place its tensor
    explicitly (``tie_weights=False``) is what keeps ``functional_call`` from setting one
    attribute twice and restoring it to the wrong tensor.

    ``trainable``: canonical names of the parameters with ``requires_grad``, in
    ``named_parameters()`` order. ``copied``: buffers a forward may update in place (those of
    modules in training mode, unless a BatchNorm that tracks no statistics), one copy per task.
    ``shared``: everything else (frozen parameters, read-only buffers), the same for all tasks.
    """

    def __init__(self, model: nn.Module) -> None:
        canonical: dict[int, str] = {}
        seen: set[tuple[int, str]] = set()
        self.slots: list[tuple[str, str]] = []
        self.trainable: list[str] = []
        tensors: dict[str, torch.Tensor] = {}
        updated: set[str] = set()
        for prefix, module in model.named_modules(remove_duplicate=False):
            writes = module.training and not (
                isinstance(module, _BatchNorm) and not module.track_running_stats
            )
            for is_buffer, store in ((False, module._parameters), (True, module._buffers)):
                for attr, tensor in store.items():
                    if tensor is None or (id(module), attr) in seen:
                        continue
                    seen.add((id(module), attr))
                    path = f"{prefix}.{attr}" if prefix else attr
                    name = canonical.setdefault(id(tensor), path)
                    self.slots.append((path, name))
                    if name != path:
                        continue
                    tensors[name] = tensor
                    if not is_buffer and tensor.requires_grad:
                        self.trainable.append(name)
                    elif is_buffer and writes:
                        updated.add(name)
        self.copied = sorted(updated)
        per_task = set(self.trainable) | updated
        self.shared = {name: t for name, t in tensors.items() if name not in per_task}


def static_layout(model: nn.Module, batch_norm: str, who: str, instead: str) -> _Layout:
    """The layout of ``model`` in ``batch_norm`` mode for code that replays adaptation from θ
    alone (the compiled engine, checkpointed unrolling), so cannot carry buffers a forward updates.

    Raises:
        TypeError: a BatchNorm in training mode updates running statistics; the message names the
            buffers, says that ``who`` cannot run them and offers ``instead``.
    """
    with batch_norm_mode(model, batch_norm):
        layout = _Layout(model)
    if layout.copied:
        raise TypeError(
            f"{who} cannot run a model whose buffers change during adaptation "
            f"({', '.join(layout.copied)}: buffers of modules in training mode, which their "
            "forward may update, as BatchNorm's running statistics); "
            f"use batch_norm='batch', eval mode, or {instead}"
        )
    return layout


def batched_forward(
    model: nn.Module,
    params: BatchedParameters,
    fixed: dict[str, torch.Tensor],
    *,
    batch_norm: str = "running",
    slots: list[tuple[str, str]] | None = None,
    step: int | None = None,
) -> BatchedForward:
    """``forward(x)`` with ``x`` stacked ``[B, ...]``: task b's parameters applied to ``x[b]``.

    Args:
        model: The module whose ``forward`` is called functionally.
        params: Tensors with a leading task axis ``[B, ...]`` (trainable parameters and per-task
            buffer copies), by canonical name.
        fixed: Frozen parameters and read-only buffers, shared by all tasks.
        batch_norm: BatchNorm behaviour (`BATCH_NORM_MODES`), applied at every call.
        slots: ``_Layout(model).slots``, when the caller has it already.
        step: The inner steps ``params`` have taken, set for every call
            (`metaopt.nn.at_inner_step`; ``None``: as the caller has it).
    """
    if slots is None:
        slots = _Layout(model).slots

    def one_task(task_tensors: dict[str, torch.Tensor], x: Any) -> Any:
        every = {**fixed, **task_tensors}
        placed = {path: every[name] for path, name in slots if name in every}
        return torch.func.functional_call(model, placed, (x,), tie_weights=False, strict=False)

    vectorised = torch.vmap(one_task, in_dims=(0, 0), randomness="different")

    if batch_norm == "running" and step is None:  # the modules as they are
        return lambda x: vectorised(params, x)

    def forward(x: Any) -> Any:
        with (
            batch_norm_mode(model, batch_norm),
            nullcontext() if step is None else at_inner_step(step),
        ):
            return vectorised(params, x)

    return forward


#: One state of an adaptation: the per-task tensors, the shared ones, the support losses at θ.
Adapted = tuple[BatchedParameters, dict[str, torch.Tensor], torch.Tensor | None]


def is_batching_failure(error: BaseException) -> bool:
    """Whether ``error`` is torch.func's refusal to batch an operation (rather than a bug in the
    user's loss): the vectorised engine cannot run the model, the loop engine can."""
    text = str(error)
    return isinstance(error, RuntimeError) and (
        "Batching rule not implemented" in text
        or "vmap: " in text
        or "functorch" in text
        or "escaped from inside a function being vmapped" in text
    )


def check_losses(losses: object, num_tasks: int, what: str, *, grad: bool = False) -> torch.Tensor:
    """Per-task losses must be a tensor of shape ``[B]`` (differentiable, with ``grad``)."""
    if not isinstance(losses, torch.Tensor):
        raise TypeError(f"{what} returned {type(losses).__name__}, expected a Tensor of shape [B]")
    if tuple(losses.shape) != (num_tasks,):
        raise ValueError(
            f"{what} returned a tensor of shape {tuple(losses.shape)}; expected ({num_tasks},), "
            "one loss per task"
        )
    if grad and not losses.requires_grad:
        raise ValueError(
            f"{what} of the meta-batch (tasks 0 to {num_tasks - 1}) does not depend on the "
            "model's parameters (its result has requires_grad=False)"
        )
    return losses
