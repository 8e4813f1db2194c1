"""Bad input to the core gets a clear error naming the argument."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import metaopt


class Task:
    def support_loss(self, model: nn.Module) -> torch.Tensor:
        return model(torch.ones(4, 2)).pow(2).mean()

    query_loss = support_loss


def model() -> nn.Module:
    return nn.Linear(2, 1)


@pytest.mark.parametrize("cls", [metaopt.MAML, metaopt.MetaSGD, metaopt.Reptile])
@pytest.mark.parametrize("lr", [0.0, -0.1, math.nan, math.inf, "0.1", True])
def test_bad_inner_lr(cls, lr) -> None:
    with pytest.raises(ValueError, match=r"inner_lr must be a positive finite number"):
        cls(model(), inner_lr=lr)


@pytest.mark.parametrize("cls", [metaopt.MAML, metaopt.MetaSGD, metaopt.Reptile])
@pytest.mark.parametrize("steps", [0, -1, 1.5, True])
def test_bad_inner_steps(cls, steps) -> None:
    with pytest.raises(ValueError, match=r"inner_steps must be an integer >= 1"):
        cls(model(), inner_lr=0.1, inner_steps=steps)


@pytest.mark.parametrize("cls", [metaopt.MAML, metaopt.Reptile])
def test_unknown_inner_optimizer(cls) -> None:
    with pytest.raises(
        ValueError, match=r"inner_optimizer must be one of sgd, adam; got 'rmsprop'"
    ):
        cls(model(), inner_lr=0.1, inner_optimizer="rmsprop")


def test_model_without_trainable_parameters() -> None:
    frozen = model().requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        metaopt.MAML(frozen, inner_lr=0.1)
    with pytest.raises(ValueError, match="no trainable parameters"):
        metaopt.MAML(nn.ReLU(), inner_lr=0.1)


def test_model_must_be_a_module() -> None:
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        metaopt.MAML(lambda x: x, inner_lr=0.1)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        metaopt.MetaSGD([nn.Parameter(torch.ones(1))], inner_lr=0.1)  # type: ignore[arg-type]


def test_first_order_must_be_bool() -> None:
    with pytest.raises(TypeError, match="first_order must be a bool"):
        metaopt.MAML(model(), inner_lr=0.1, first_order="yes")  # type: ignore[arg-type]


@pytest.mark.parametrize("cls", [metaopt.MAML, metaopt.MetaSGD, metaopt.Reptile])
def test_empty_task_batch(cls) -> None:
    with pytest.raises(ValueError, match="tasks is empty"):
        cls(model(), inner_lr=0.1).meta_backward([])


def test_single_task_not_wrapped() -> None:
    with pytest.raises(TypeError, match="wrap a single task in a list"):
        metaopt.MAML(model(), inner_lr=0.1).meta_backward(Task())  # type: ignore[arg-type]


def test_object_that_is_not_a_task() -> None:
    with pytest.raises(TypeError, match=r"task 1 \(int\) does not implement the Task protocol"):
        metaopt.MAML(model(), inner_lr=0.1).meta_backward([Task(), 3])  # type: ignore[list-item]


class VectorLoss(Task):
    def query_loss(self, model: nn.Module) -> torch.Tensor:
        return model(torch.ones(4, 2)).pow(2)


class NumberLoss(Task):
    def support_loss(self, model: nn.Module) -> float:  # type: ignore[override]
        return 1.0


class ConstantLoss(Task):
    def support_loss(self, model: nn.Module) -> torch.Tensor:
        return torch.tensor(1.0)


@pytest.mark.parametrize("cls", [metaopt.MAML, metaopt.MetaSGD])
def test_non_scalar_loss(cls) -> None:
    with pytest.raises(
        ValueError, match=r"query_loss of task 0 returned a tensor of shape \(4, 1\)"
    ):
        cls(model(), inner_lr=0.1).meta_backward([VectorLoss()])


def test_loss_that_is_not_a_tensor() -> None:
    with pytest.raises(TypeError, match="support_loss of task 0 returned float"):
        metaopt.Reptile(model(), inner_lr=0.1).meta_backward([NumberLoss()])


def test_loss_that_does_not_depend_on_the_model() -> None:
    with pytest.raises(ValueError, match="does not depend on the model's parameters"):
        metaopt.MAML(model(), inner_lr=0.1).meta_backward([ConstantLoss()])


@pytest.mark.parametrize("steps", [-1, 1.0])
def test_adapt_bad_steps(steps) -> None:
    algo = metaopt.MAML(model(), inner_lr=0.1)
    with (
        pytest.raises(ValueError, match="steps must be an integer >= 0"),
        algo.adapt(Task(), steps),
    ):
        pass


def test_linear_annealing() -> None:
    param = nn.Parameter(torch.zeros(1))
    outer = torch.optim.SGD([param], lr=0.1)
    schedule = metaopt.linear_annealing(outer, total_steps=4)
    rates = []
    for _ in range(4):
        rates.append(outer.param_groups[0]["lr"])
        outer.step()
        schedule.step()
    assert rates == pytest.approx([0.1, 0.075, 0.05, 0.025])
    with pytest.raises(ValueError, match="total_steps must be >= 1"):
        metaopt.linear_annealing(outer, 0)
