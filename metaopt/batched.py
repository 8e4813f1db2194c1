"""The batched inner loop, written once, and the vectorised engine's meta-iteration.

`inner_step` is one inner step of every task of a meta-batch at once, a function of tensors
(the parameters with a leading task axis, ``θ_b = θ.expand(B, ...)``), and `step_path` the inner
loop of such steps. Every batched engine runs them: eagerly with `autograd_gradients` it is the
vectorised engine (`inner_path`, then `batched_outer` for the rule's outer rule); with
`functional_gradients` under ``torch.compile`` it is the compiled engine (`metaopt.functional`);
recomputed in the backward pass it is checkpointed unrolling (`metaopt.unroll`). They run any rule
(`metaopt.rules`) and name none.

Per-task gradients come from one backward pass: task *b*'s loss depends only on ``θ_b``, so the
gradient of ``Σ_b L_b`` with respect to the stacked ``θ_b`` is, row by row, each task's own
gradient. Because ``θ_b`` is a view of θ, the outer backward of ``Σ_b w·L^q_b(θ'_b)`` sums the
per-task meta-gradients into ``θ.grad``; first-order MAML takes the inner gradients without a
graph, so ``∂θ'_b/∂θ = I`` as in the loop engine.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import nullcontext
from typing import Any

import torch
from torch import nn
from torchopt.base import GradientTransformation

from metaopt.engine import (
    Adapted,
    BatchedParameters,
    _Layout,
    batch_norm_mode,
    batched_forward,
    check_losses,
)
from metaopt.nn import at_inner_step
from metaopt.rules.base import difference, weighted_query_loss
from metaopt.task import BatchedForward, BatchedTasks

__all__ = [
    "Batch",
    "Gradients",
    "add_to_grad",
    "autograd_gradients",
    "batched_outer",
    "functional_gradients",
    "inner_path",
    "inner_step",
    "multi_step_outer",
    "step_path",
    "support_after",
    "with_rows",
]

Tensors = tuple[torch.Tensor, ...]
#: How an inner step differentiates: ``gradients(losses_of, point, create_graph)`` gives the
#: gradients of ``losses_of(point).sum()`` with respect to each tensor of ``point`` (``None`` or 0
#: for one the losses do not use) and the per-task losses themselves.
Gradients = Callable[
    [Callable[[Tensors], torch.Tensor], Tensors, bool],
    tuple[Sequence[torch.Tensor | None], torch.Tensor],
]


def autograd_gradients(
    losses_of: Callable[[Tensors], torch.Tensor], point: Tensors, create_graph: bool
) -> tuple[Sequence[torch.Tensor | None], torch.Tensor]:
    """The eager engines' `Gradients`: one backward pass of the summed losses."""
    losses = losses_of(point)
    grads = torch.autograd.grad(losses.sum(), point, create_graph=create_graph, allow_unused=True)
    return grads, losses


def functional_gradients(
    losses_of: Callable[[Tensors], torch.Tensor], point: Tensors, create_graph: bool
) -> tuple[Sequence[torch.Tensor | None], torch.Tensor]:
    """The compiled engine's `Gradients`: ``torch.func.grad``, which ``torch.compile`` traces (a
    first-order step detaches the gradients; a second-order one is differentiated by the
    ``torch.func.grad`` around it)."""

    def total(point: Tensors) -> tuple[torch.Tensor, torch.Tensor]:
        losses = losses_of(point)
        return losses.sum(), losses

    grads, losses = torch.func.grad(total, has_aux=True)(point)
    return (grads if create_graph else tuple(g.detach() for g in grads)), losses


def inner_step(
    support: Callable[[Tensors, int], torch.Tensor],
    every: Tensors,
    rows: Sequence[int],
    transform: GradientTransformation,
    state: Any,
    step: int,
    *,
    create_graph: bool,
    gradients: Gradients = autograd_gradients,
    graph_update: bool = True,
) -> tuple[tuple[torch.Tensor | None, ...], Any, torch.Tensor]:
    """One inner step of every task at once, as a function of tensors: the batched inner loop's
    body, which every batched engine runs (eagerly, compiled, or recomputed in the backward pass).

    Args:
        support: ``support(every, step)``, the per-task support losses ``[B]`` at ``every``.
        every: Every model parameter in ``parameters()`` order: the per-task ones ``[B, ...]``,
            the frozen ones as they are.
        rows: The positions in ``every`` the inner loop adapts; the others get ``None``.
        transform: The rule's inner update.
        state: Its state.
        step: The inner step's index (the tasks may sample per step).
        create_graph: Keep the gradients' graph (second order).
        gradients: How to differentiate (`autograd_gradients`, `functional_gradients`).
        graph_update: Record the update itself for autograd (off where it is recomputed).

    Returns:
        The updates (``None`` where nothing moves), the new state, the support losses.
    """

    def losses_of(point: Tensors) -> torch.Tensor:
        return support(with_rows(every, rows, point), step)

    # The step a per-step module reads (`metaopt.nn.at_inner_step`); the compiled engine, which
    # refuses such modules, cannot trace a context variable.
    with nullcontext() if torch.compiler.is_compiling() else at_inner_step(step):
        found, losses = gradients(losses_of, tuple(every[i] for i in rows), create_graph)
    grads: list[torch.Tensor | None] = [None] * len(every)
    for i, grad in zip(rows, found, strict=True):
        grads[i] = grad
    with nullcontext() if graph_update else torch.no_grad():
        updates, state = transform.update(tuple(grads), state, params=every, inplace=False)
    return updates, state, losses


def with_rows(every: Tensors, rows: Sequence[int], point: Sequence[torch.Tensor]) -> Tensors:
    """``every`` with its entries at ``rows`` replaced by ``point``'s, in order."""
    merged = list(every)
    for i, tensor in zip(rows, point, strict=True):
        merged[i] = tensor
    return tuple(merged)


def applied(every: Tensors, updates: Sequence[torch.Tensor | None]) -> Tensors:
    """``every`` moved by ``updates`` (TorchOpt's ``apply_updates`` without its tree walk)."""
    return tuple(p if u is None else p + u for p, u in zip(every, updates, strict=True))


def step_path(
    support: Callable[[Tensors, int], torch.Tensor],
    every: Tensors,
    rows: Sequence[int],
    transform: GradientTransformation,
    steps: int,
    *,
    create_graph: bool,
    gradients: Gradients = autograd_gradients,
) -> Iterator[tuple[Tensors, torch.Tensor | None]]:
    """The batched inner loop, written once: ``every`` after 0, 1, ..., ``steps`` `inner_step`s,
    each with the support losses at θ (detached; ``None`` before the first step)."""
    state = transform.init(every)
    before = None
    for step in range(steps + 1):
        yield every, before
        if step == steps:
            return
        updates, state, losses = inner_step(
            support, every, rows, transform, state, step,
            create_graph=create_graph, gradients=gradients,
        )  # fmt: skip
        if before is None:
            before = losses.detach()
        every = applied(every, updates)


class Batch:
    """A model laid out for the batched engines: which parameters are per task and which of them
    the inner loop adapts, the shared tensors, the per-task buffer copies, and the support losses
    as a function of the parameters. Built once per layout (outside a compiled function)."""

    def __init__(
        self,
        model: nn.Module,
        *,
        batch_norm: str,
        adapted: Collection[str] | None,
        layout: _Layout | None = None,
    ) -> None:
        if layout is None:
            with batch_norm_mode(model, batch_norm):
                layout = _Layout(model)
        self.model, self.batch_norm, self.layout = model, batch_norm, layout
        self.names = [n for n, _ in model.named_parameters()]
        trainable = set(layout.trainable)
        self.per_task = [(i, n) for i, n in enumerate(self.names) if n in trainable]
        self.per_task_rows = frozenset(i for i, _ in self.per_task)
        self.rows = [i for i, n in self.per_task if adapted is None or n in adapted]
        self.copies: dict[str, torch.Tensor] = {}

    def expand(self, params: Sequence[torch.Tensor], num_tasks: int) -> Tensors:
        """Every parameter (``parameters()`` order), the per-task ones expanded to ``[B, ...]``;
        and fresh per-task copies of the buffers a forward updates."""
        if self.layout.copied:
            buffers = dict(self.model.named_buffers())
            self.copies = {
                n: buffers[n].expand(num_tasks, *buffers[n].shape).clone()
                for n in self.layout.copied
            }
        rows = self.per_task_rows
        return tuple(
            p.expand(num_tasks, *p.shape) if i in rows else p for i, p in enumerate(params)
        )

    def params(self, every: Tensors) -> BatchedParameters:
        """The per-task tensors by name: the parameters of ``every`` and the buffer copies."""
        return {**{n: every[i] for i, n in self.per_task}, **self.copies}

    def forward(
        self, every: Tensors, shared: dict[str, torch.Tensor] | None = None
    ) -> BatchedForward:
        shared = self.layout.shared if shared is None else shared
        return batched_forward(
            self.model, self.params(every), shared, batch_norm=self.batch_norm,
            slots=self.layout.slots,
        )  # fmt: skip

    def support(self, tasks: BatchedTasks, every: Tensors, step: int | None) -> torch.Tensor:
        """The per-task support losses ``[B]`` at ``every`` (checked; ``step=None``: the whole
        support set, as the tasks define it)."""
        losses = tasks.support_losses(self.forward(every), step)
        return check_losses(losses, len(tasks), "support_losses", grad=True)


def inner_path(
    model: nn.Module,
    tasks: BatchedTasks,
    transform: GradientTransformation,
    steps: int,
    *,
    create_graph: bool,
    batch_norm: str = "running",
    adapted: Collection[str] | None = None,
) -> Iterator[Adapted]:
    """Adapt every task of ``tasks`` by ``steps`` differentiable steps of ``transform``, yielding
    the state after 0, 1, ..., ``steps`` steps (an evaluation reads the whole adaptation curve
    from one adaptation): `step_path` run eagerly.

    ``transform`` receives one gradient per parameter in ``named_parameters()`` order, ``None``
    for a frozen one, as under [`metaopt.inner.InnerOptimizer`][metaopt.InnerOptimizer]. ``adapted``
    (names; ``None``: every trainable parameter) limits the update to those parameters: the others
    get ``None`` too, but keep their per-task copy of θ, through which the meta-gradient reaches
    them.

    Yields:
        The per-task tensors ``{name: [B, ...]}`` (adapted parameters and per-task buffer
        copies), the shared tensors (frozen parameters and read-only buffers), and the support
        losses at θ (``[B]``, detached; ``None`` before the first step).
    """
    batch = Batch(model, batch_norm=batch_norm, adapted=adapted)
    every = batch.expand(list(model.parameters()), len(tasks))
    support = functools.partial(batch.support, tasks)
    path = step_path(support, every, batch.rows, transform, steps, create_graph=create_graph)
    for state, before in path:
        yield batch.params(state), batch.layout.shared, before


def add_to_grad(
    targets: Sequence[torch.Tensor], sums: Sequence[torch.Tensor], weight: float
) -> None:
    """``.grad += weight × sum`` for each target (the product itself where ``.grad`` is ``None``)."""
    for p, total in zip(targets, sums, strict=True):
        direction = total * weight
        p.grad = direction if p.grad is None else p.grad + direction


def batched_outer(
    outer: str,
    model: nn.Module,
    tasks: BatchedTasks,
    adapted: Adapted,
    weight: float,
    *,
    batch_norm: str = "running",
    steps: int = 0,
) -> tuple[torch.Tensor, Callable[[], torch.Tensor], torch.Tensor]:
    """A rule's outer rule on the adapted meta-batch, eagerly: the query-gradient rule's backward
    of `weighted_query_loss`, or the difference rule's sums added to ``.grad`` of θ. Returns the
    fields of ``MetaMetrics``: support losses at θ, the lazy support losses after adaptation and
    the query losses (detached). ``steps``: the inner steps ``adapted`` has taken."""
    params, fixed, before = adapted
    assert before is not None
    forward = batched_forward(model, params, fixed, batch_norm=batch_norm, step=steps)
    if outer == "query-gradient":
        query = check_losses(tasks.query_losses(forward), len(tasks), "query_losses", grad=True)
        weighted_query_loss(query, weight).backward()
        query = query.detach()
    else:
        theta = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        sums = difference([p.detach() for _, p in theta], [params[n].detach() for n, _ in theta])
        add_to_grad([p for _, p in theta], sums, weight)
        with torch.no_grad():
            query = check_losses(tasks.query_losses(forward), len(tasks), "query_losses")

    return before, support_after(tasks, forward), query


def multi_step_outer(
    model: nn.Module,
    tasks: BatchedTasks,
    path: Sequence[Adapted],
    step_weights: Sequence[float],
    weight: float,
    *,
    batch_norm: str = "running",
) -> tuple[torch.Tensor, Callable[[], torch.Tensor], torch.Tensor]:
    r"""The query-gradient rule with a weighted query loss after every inner step, eagerly: the
    backward of $w\sum_b\sum_{k=1}^K v_k\mathcal{L}^q_b(\theta^{(k)}_b)$ over ``path`` (the
    states after 0, 1, ..., K steps, `inner_path`) with ``step_weights`` $v_1, \dots, v_K$.
    Returns `batched_outer`'s fields, the query losses those of the last step."""
    if len(step_weights) != len(path) - 1:
        raise ValueError(
            f"{len(step_weights)} step weights for {len(path) - 1} inner steps: one per step"
        )
    total: torch.Tensor | None = None
    forward = None
    query = None
    for step, ((params, fixed, _), step_weight) in enumerate(
        zip(path[1:], step_weights, strict=True), 1
    ):
        forward = batched_forward(model, params, fixed, batch_norm=batch_norm, step=step)
        query = check_losses(tasks.query_losses(forward), len(tasks), "query_losses", grad=True)
        total = query * step_weight if total is None else total + query * step_weight
    assert total is not None and forward is not None and query is not None
    weighted_query_loss(total, weight).backward()
    before = path[-1][2]
    assert before is not None
    return before, support_after(tasks, forward), query.detach()


def support_after(tasks: BatchedTasks, forward: BatchedForward) -> Callable[[], torch.Tensor]:
    """The support losses at the adapted parameters ``forward`` applies, computed when called
    (``MetaMetrics.support_after`` is read lazily)."""

    def compute() -> torch.Tensor:
        with torch.no_grad():
            losses = tasks.support_losses(forward, None)
        return check_losses(losses, len(tasks), "support_losses")

    return compute
