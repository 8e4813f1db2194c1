"""TaskBatch and its per-task views: views not copies, batched losses, the minibatch cursor."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from metaopt.task import Task
from supervised.batch import TaskBatch, per_task_loss, task_loss, task_metric


def _batch(minibatch: int | None = None, tasks: int = 3, shots: int = 7) -> TaskBatch:
    gen = torch.Generator().manual_seed(0)
    order = None
    if minibatch is not None:
        order = torch.stack([torch.randperm(shots, generator=gen) for _ in range(tasks)])
    return TaskBatch(
        support_x=torch.randn(tasks, shots, 1, generator=gen),
        support_y=torch.randn(tasks, shots, 1, generator=gen),
        query_x=torch.randn(tasks, 4, 1, generator=gen),
        query_y=torch.randn(tasks, 4, 1, generator=gen),
        loss="mse",
        minibatch=minibatch,
        support_order=order,
    )


class Recorder(nn.Module):
    """Identity-plus-bias model that remembers every input it was called with."""

    def __init__(self) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(1))
        self.seen: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(x.detach().clone())
        return x + self.bias


def test_batch_is_a_sequence_of_tasks_that_view_its_tensors() -> None:
    batch = _batch()
    assert len(batch) == 3 and len(list(batch)) == 3
    for i, task in enumerate(batch):
        assert isinstance(task, Task)
        assert task.index == i
        # A view shares storage with the stacked tensor: no copy per task.
        assert task.support_x.data_ptr() == batch.support_x[i].data_ptr()
        assert task.query_y.data_ptr() == batch.query_y[i].data_ptr()
    assert batch[1] is batch[1]  # made once, so cursors persist


def test_losses_are_one_forward_over_the_set() -> None:
    batch = _batch()
    model = Recorder()
    task = batch[2]
    loss = task.support_loss(model)
    assert len(model.seen) == 1 and model.seen[0].shape == (7, 1)
    expected = np.mean((batch.support_x[2].numpy() - batch.support_y[2].numpy()) ** 2)
    assert loss.item() == pytest.approx(float(expected), rel=1e-6)
    query = task.query_loss(model)
    expected = np.mean((batch.query_x[2].numpy() - batch.query_y[2].numpy()) ** 2)
    assert query.item() == pytest.approx(float(expected), rel=1e-6)


def test_cursor_walks_one_shuffled_epoch_then_repeats_it() -> None:
    batch = _batch(minibatch=3, shots=7)  # minibatches of 3, 3, 1
    task = batch[1]
    model = Recorder()
    for _ in range(6):  # two epochs
        task.support_loss(model)
    sizes = [len(x) for x in model.seen]
    assert sizes == [3, 3, 1, 3, 3, 1]
    first_epoch = torch.cat(model.seen[:3]).flatten()
    order = batch.support_order[1]
    assert torch.equal(first_epoch, batch.support_x[1].flatten()[order])
    assert torch.equal(torch.cat(model.seen[3:]).flatten(), first_epoch)


def test_support_loss_without_gradients_sees_everything_and_keeps_the_cursor() -> None:
    batch = _batch(minibatch=3, shots=7)
    task = batch[0]
    model = Recorder()
    task.support_loss(model)
    assert task.cursor == 1
    with torch.no_grad():
        task.support_loss(model)
    assert task.cursor == 1
    assert model.seen[-1].shape == (7, 1)


def test_select_makes_an_independent_sub_batch() -> None:
    batch = _batch(minibatch=3)
    batch[0].support_loss(Recorder())
    sub = batch.select([2, 0])
    assert len(sub) == 2
    assert torch.equal(sub.support_x[0], batch.support_x[2])
    assert sub[1].cursor == 0


def test_inconsistent_shapes_are_rejected() -> None:
    support = (torch.zeros(2, 3, 1), torch.zeros(2, 3, 1))
    with pytest.raises(ValueError, match="number of tasks"):
        TaskBatch(*support, torch.zeros(3, 3, 1), torch.zeros(3, 3, 1), "mse")
    with pytest.raises(ValueError, match="support_order"):
        TaskBatch(*support, *support, "mse", minibatch=2)
    with pytest.raises(ValueError, match="loss must be one of"):
        TaskBatch(
            torch.zeros(2, 3, 1),
            torch.zeros(2, 3, 1),
            torch.zeros(2, 3, 1),
            torch.zeros(2, 3, 1),
            "hinge",
        )


def test_metrics_against_hand_computed_values() -> None:
    logits = torch.tensor([[2.0], [-1.0], [0.5], [-3.0]])
    labels = torch.tensor([[1.0], [1.0], [0.0], [0.0]])
    assert task_metric("bce", logits, labels).item() == pytest.approx(0.5)
    expected = np.mean(np.log1p(np.exp(-np.array([2.0, -1.0, -0.5, 3.0]))))
    assert task_loss("bce", logits, labels).item() == pytest.approx(expected, rel=1e-6)
    scores = torch.tensor([[0.1, 0.9, 0.0], [2.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    assert task_metric("ce", scores, torch.tensor([1, 1, 2])).item() == pytest.approx(2 / 3)


def test_per_task_losses_equal_the_scalar_losses_of_each_task() -> None:
    gen = torch.Generator().manual_seed(1)
    cases = {
        "mse": (torch.randn(4, 6, 1, generator=gen), torch.randn(4, 6, 1, generator=gen)),
        "bce": (
            torch.randn(4, 6, 1, generator=gen),
            torch.randint(0, 2, (4, 6, 1), generator=gen).float(),
        ),
        "ce": (torch.randn(4, 6, 3, generator=gen), torch.randint(0, 3, (4, 6), generator=gen)),
    }
    for kind, (outputs, targets) in cases.items():
        expected = torch.stack(
            [task_loss(kind, o, t) for o, t in zip(outputs, targets, strict=True)]
        )
        torch.testing.assert_close(per_task_loss(kind, outputs, targets), expected)


def test_batched_minibatches_are_the_loop_cursor_minibatches() -> None:
    batch = _batch(minibatch=3, shots=7)
    seen: list[torch.Tensor] = []

    def forward(x: torch.Tensor) -> torch.Tensor:
        seen.append(x.clone())
        return x

    for step in range(4):
        batch.support_losses(forward, step)
    model = Recorder()
    for task in batch:
        model.seen.clear()
        for _ in range(4):
            task.support_loss(model)
        for step in range(4):
            assert torch.equal(seen[step][task.index], model.seen[step])
    batch.support_losses(forward, None)
    assert seen[-1].shape == (3, 7, 1)
