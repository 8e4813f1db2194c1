"""A meta-batch of supervised tasks stored as stacked tensors, and the per-task views the core uses.

Every supervised family samples a `TaskBatch`: support and query sets of ``B`` tasks stacked
along a leading task axis (``support_x`` is ``[B, K, ...]``). The meta-learners of `metaopt`
can consume it in two ways, and both compute the same losses (tested):

* the loop engine takes tasks one at a time through the [`metaopt.task.Task`][metaopt.Task]
  protocol: a batch is a sequence of `SupervisedTask` objects, each holding its batch and its index
  and reading its data as views (``batch.support_x[i]``), never copies;
* the vectorised engine (`metaopt.engine`) calls the batch itself through the
  [`metaopt.task.BatchedTasks`][metaopt.BatchedTasks] protocol (``support_losses(forward, step)``,
  ``query_losses(forward)``), one forward pass for all tasks. The evaluation's batched adaptation
  (`supervised.adaptation`) reads the stacked tensors too.

Each loss is one forward pass over a task's whole support (or query) set, or its minibatch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import overload

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["LOSSES", "SupervisedTask", "TaskBatch", "per_task_loss", "task_loss", "task_metric"]

#: ``mse``: regression, outputs ``[K, 1]``, targets ``[K, 1]``.
#: ``bce``: binary classification, logits ``[K, 1]``, targets ``[K, 1]`` in {0., 1.}.
#: ``ce``: N-way classification, logits ``[K, N]``, integer targets ``[K]``.
LOSSES = ("mse", "bce", "ce")


def task_loss(kind: str, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean loss of one task's predictions; ``kind`` is one of `LOSSES`."""
    if kind == "mse":
        return F.mse_loss(outputs, targets)
    if kind == "bce":
        return F.binary_cross_entropy_with_logits(outputs, targets)
    if kind == "ce":
        return F.cross_entropy(outputs, targets)
    raise ValueError(f"loss must be one of {', '.join(LOSSES)}; got {kind!r}")


def per_task_loss(kind: str, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Losses ``[B]`` of stacked predictions ``[B, K, ...]``: ``task_loss`` of each task at once."""
    if kind == "mse":
        return (outputs - targets).pow(2).flatten(1).mean(dim=1)
    if kind == "bce":
        losses = F.binary_cross_entropy_with_logits(outputs, targets, reduction="none")
        return losses.flatten(1).mean(dim=1)
    if kind == "ce":
        losses = F.cross_entropy(outputs.flatten(0, 1), targets.flatten(), reduction="none")
        return losses.view(targets.shape[0], -1).mean(dim=1)
    raise ValueError(f"loss must be one of {', '.join(LOSSES)}; got {kind!r}")


def task_metric(kind: str, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The number a family reports: mean squared error for ``mse``, accuracy for the others."""
    if kind == "mse":
        return F.mse_loss(outputs, targets)
    if kind == "bce":
        return ((outputs > 0).to(targets.dtype) == targets).float().mean()
    if kind == "ce":
        return (outputs.argmax(dim=-1) == targets).float().mean()
    raise ValueError(f"loss must be one of {', '.join(LOSSES)}; got {kind!r}")


@dataclass(eq=False)
class TaskBatch(Sequence["SupervisedTask"]):
    """``B`` supervised tasks as stacked tensors; indexing or iterating yields per-task views.

    Attributes:
        support_x: Support inputs, ``[B, K, ...]``.
        support_y: Support targets, ``[B, K, ...]``.
        query_x: Query inputs, ``[B, Q, ...]``.
        query_y: Query targets, ``[B, Q, ...]``.
        loss: One of `LOSSES`.
        minibatch: When set, each inner step (each ``support_loss`` call with gradients enabled)
            sees the next ``minibatch`` support points of one shuffled epoch instead of the whole
            support set: the Reptile demo's inner SGD. ``None``: full batch.
        support_order: ``[B, K]`` permutation of the support points that defines the epoch's
            minibatches; required when ``minibatch`` is set.
        info: Per-task parameters of the generating distribution (amplitudes, phases, decision
            boundaries, class ids), each ``[B, ...]``, for plots and tests.
    """

    support_x: torch.Tensor
    support_y: torch.Tensor
    query_x: torch.Tensor
    query_y: torch.Tensor
    loss: str
    minibatch: int | None = None
    support_order: torch.Tensor | None = None
    info: Mapping[str, torch.Tensor] = field(default_factory=dict)
    _tasks: list[SupervisedTask] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {', '.join(LOSSES)}; got {self.loss!r}")
        sizes = {t.shape[0] for t in (self.support_x, self.support_y, self.query_x, self.query_y)}
        if len(sizes) != 1:
            raise ValueError(f"support and query tensors disagree on the number of tasks: {sizes}")
        if self.support_x.shape[:2] != self.support_y.shape[:2]:
            raise ValueError("support_x and support_y disagree on the number of support points")
        if self.query_x.shape[:2] != self.query_y.shape[:2]:
            raise ValueError("query_x and query_y disagree on the number of query points")
        if self.minibatch is not None:
            if self.minibatch < 1:
                raise ValueError(f"minibatch must be >= 1 or None, got {self.minibatch}")
            if self.support_order is None:
                raise ValueError("a minibatched TaskBatch needs support_order")
            if tuple(self.support_order.shape) != tuple(self.support_x.shape[:2]):
                raise ValueError("support_order must have shape [B, K]")
        # The views are made once, so that a task's minibatch cursor survives re-indexing.
        self._tasks = [SupervisedTask(self, i) for i in range(self.num_tasks)]

    @property
    def num_tasks(self) -> int:
        return int(self.support_x.shape[0])

    @property
    def shots(self) -> int:
        """Support points per task."""
        return int(self.support_x.shape[1])

    def __len__(self) -> int:
        return self.num_tasks

    @overload
    def __getitem__(self, index: int) -> SupervisedTask: ...

    @overload
    def __getitem__(self, index: slice) -> list[SupervisedTask]: ...

    def __getitem__(self, index: int | slice) -> SupervisedTask | list[SupervisedTask]:
        return self._tasks[index]

    def __iter__(self) -> Iterator[SupervisedTask]:
        return iter(self._tasks)

    @property
    def num_minibatches(self) -> int:
        """Inner steps in one epoch over the support set (1 when not minibatched)."""
        if self.minibatch is None:
            return 1
        return -(-self.shots // self.minibatch)

    def minibatch_rows(self, step: int) -> torch.Tensor | None:
        """``[B, m]`` support rows of inner step ``step`` (0-based), or ``None`` for all rows.

        Step ``s`` uses minibatch ``s mod num_minibatches`` of each task's ``support_order``.
        """
        if self.minibatch is None or self.minibatch >= self.shots:
            return None
        assert self.support_order is not None
        start = (step % self.num_minibatches) * self.minibatch
        return self.support_order[:, start : start + self.minibatch]

    def support_losses(
        self, forward: Callable[[torch.Tensor], torch.Tensor], step: int | None
    ) -> torch.Tensor:
        """Support losses ``[B]`` of all tasks at inner step ``step`` in one batched forward.

        The [`metaopt.task.BatchedTasks`][metaopt.BatchedTasks] protocol of the vectorised engine:
        ``forward`` applies task b's parameters to ``x[b]``. ``step=None`` means the whole support
        set.
        """
        x, y = self.support_x, self.support_y
        rows = None if step is None else self.minibatch_rows(step)
        if rows is not None:
            tasks = torch.arange(self.num_tasks, device=rows.device).unsqueeze(1)
            x, y = x[tasks, rows], y[tasks, rows]
        return per_task_loss(self.loss, forward(x), y)

    def query_losses(self, forward: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """Query losses ``[B]`` of all tasks in one batched forward."""
        return per_task_loss(self.loss, forward(self.query_x), self.query_y)

    def to(self, device: torch.device | str) -> TaskBatch:
        """The batch with every tensor on ``device`` (itself when they are there already)."""
        device = torch.device(device)
        if self.support_x.device == device:
            return self
        return TaskBatch(
            support_x=self.support_x.to(device),
            support_y=self.support_y.to(device),
            query_x=self.query_x.to(device),
            query_y=self.query_y.to(device),
            loss=self.loss,
            minibatch=self.minibatch,
            support_order=None if self.support_order is None else self.support_order.to(device),
            info={k: v.to(device) for k, v in self.info.items()},
        )

    def select(self, indices: Sequence[int] | slice | torch.Tensor) -> TaskBatch:
        """A new batch holding the chosen tasks (fresh cursors), e.g. a chunk for evaluation."""
        if isinstance(indices, slice):
            pick = indices
        else:
            pick = torch.as_tensor(indices, dtype=torch.long)
        return TaskBatch(
            support_x=self.support_x[pick],
            support_y=self.support_y[pick],
            query_x=self.query_x[pick],
            query_y=self.query_y[pick],
            loss=self.loss,
            minibatch=self.minibatch,
            support_order=None if self.support_order is None else self.support_order[pick],
            info={k: v[pick] for k, v in self.info.items()},
        )


def _task_view(name: str) -> property:
    """A `SupervisedTask` attribute: its rows of the batch's stacked tensor ``name``."""
    return property(
        lambda task: getattr(task.batch, name)[task.index], doc=f"``batch.{name}[index]``"
    )


class SupervisedTask:
    """One task of a `TaskBatch`: the [`metaopt.task.Task`][metaopt.Task] protocol over views.

    With ``batch.minibatch`` set, the task keeps a cursor: the n-th ``support_loss`` call that
    has gradients enabled uses minibatch ``n mod ceil(K / minibatch)`` of the task's shuffled
    support order, so ``inner_steps = ceil(K / minibatch)`` inner steps are exactly one epoch,
    as in the Reptile seed, and more steps repeat the epoch in the same order. A support loss
    evaluated without gradients (the core's "support loss after adaptation" metric) sees the
    whole support set and leaves the cursor where it was.
    """

    __slots__ = ("_cursor", "batch", "index")

    def __init__(self, batch: TaskBatch, index: int) -> None:
        self.batch = batch
        self.index = index
        self._cursor = 0

    support_x = _task_view("support_x")
    support_y = _task_view("support_y")
    query_x = _task_view("query_x")
    query_y = _task_view("query_y")

    @property
    def cursor(self) -> int:
        """Index of the minibatch the next inner step will use (0 when not minibatched)."""
        return self._cursor

    def next_support(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The support points of the next inner step; advances the cursor when minibatched."""
        rows = self.batch.minibatch_rows(self._cursor)
        if rows is None:
            return self.support_x, self.support_y
        self._cursor = (self._cursor + 1) % self.batch.num_minibatches
        return self.support_x[rows[self.index]], self.support_y[rows[self.index]]

    def support_loss(self, model: nn.Module) -> torch.Tensor:
        """Loss on the support set (or its next minibatch), in one forward pass."""
        if torch.is_grad_enabled():
            x, y = self.next_support()
        else:
            x, y = self.support_x, self.support_y
        return task_loss(self.batch.loss, model(x), y)

    def query_loss(self, model: nn.Module) -> torch.Tensor:
        """Loss on the query set, in one forward pass."""
        return task_loss(self.batch.loss, model(self.query_x), self.query_y)

    def query_metric(self, model: nn.Module) -> float:
        """The family's reported number (MSE or accuracy) on the query set."""
        with torch.no_grad():
            return float(task_metric(self.batch.loss, model(self.query_x), self.query_y))

    def __repr__(self) -> str:
        return f"SupervisedTask(index={self.index}, loss={self.batch.loss!r}, shots={self.batch.shots})"
