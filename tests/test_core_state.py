"""Task isolation: after meta_backward and adapt, everything is bit-identical to before."""

from __future__ import annotations

import pytest
import torch
from core_helpers import BatchNormNet
from torch import nn

import metaopt
from metaopt.testing import assert_state_restored


class Task:
    def __init__(self, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        self.x, self.y = torch.randn(10, 3, generator=g), torch.randn(10, 1, generator=g)

    def support_loss(self, model: nn.Module) -> torch.Tensor:
        return ((model(self.x) - self.y) ** 2).mean()

    query_loss = support_loss


ALGORITHMS = {
    "maml": lambda m: metaopt.MAML(m, inner_lr=0.1, inner_steps=2),
    "fomaml": lambda m: metaopt.MAML(m, inner_lr=0.1, inner_steps=2, first_order=True),
    "maml-adam": lambda m: metaopt.MAML(m, inner_lr=0.1, inner_steps=2, inner_optimizer="adam"),
    "metasgd": lambda m: metaopt.MetaSGD(m, inner_lr=0.1, inner_steps=2),
    "reptile": lambda m: metaopt.Reptile(m, inner_lr=0.1, inner_steps=3),
    "imaml": lambda m: metaopt.IMAML(m, inner_lr=0.1, inner_steps=3, reg=2.0, cg_steps=30),
    "maml-anil": lambda m: metaopt.MAML(m, inner_lr=0.1, inner_steps=2, adapt=["body.3"]),
}


@pytest.mark.parametrize("name", sorted(ALGORITHMS))
def test_meta_backward_restores_model_buffers_and_optimizer(name: str) -> None:
    model = BatchNormNet()
    algo = ALGORITHMS[name](model)
    tasks = [Task(0), Task(1)]
    assert_state_restored(model, algo.inner_optimizer, lambda: algo.meta_backward(tasks))
    assert all(p.grad is not None for p in algo.meta_parameters())


@pytest.mark.parametrize("name", sorted(ALGORITHMS))
def test_adapt_restores_and_really_adapts(name: str) -> None:
    model = BatchNormNet()
    algo = ALGORITHMS[name](model)
    task = Task(3)
    before = task.support_loss(model).item()

    def use() -> None:
        with algo.adapt(task) as adapted:
            assert task.support_loss(adapted).item() < before
            assert adapted.body[1].running_mean.abs().sum() > 0  # BatchNorm stats did move

    model.body[1].reset_running_stats()
    assert_state_restored(model, algo.inner_optimizer, use)


@pytest.mark.parametrize("name", sorted(ALGORITHMS))
def test_adapt_restores_after_an_exception(name: str) -> None:
    model = BatchNormNet()
    algo = ALGORITHMS[name](model)

    def fail_inside() -> None:
        with pytest.raises(RuntimeError, match="boom"), algo.adapt(Task(0)):
            raise RuntimeError("boom")

    assert_state_restored(model, algo.inner_optimizer, fail_inside)


def test_meta_backward_restores_after_a_failing_task() -> None:
    model = BatchNormNet()
    algo = metaopt.MAML(model, inner_lr=0.1)

    class Broken(Task):
        def query_loss(self, model: nn.Module) -> torch.Tensor:
            raise RuntimeError("query failed")

    def run() -> None:
        with pytest.raises(RuntimeError, match="query failed"):
            algo.meta_backward([Task(0), Broken(1)])

    assert_state_restored(model, algo.inner_optimizer, run)


def test_eval_mode_and_frozen_parameters_are_kept() -> None:
    model = BatchNormNet().eval()
    model.body[0].bias.requires_grad_(False)
    algo = metaopt.MAML(model, inner_lr=0.1)
    frozen = model.body[0].bias.detach().clone()
    with algo.adapt(Task(0)) as adapted:
        assert not adapted.training
        assert torch.equal(adapted.body[0].bias, frozen)  # frozen: not adapted
    algo.meta_backward([Task(0)])
    assert model.body[0].bias.grad is None
    assert model.body[0].weight.grad is not None


def test_adapt_zero_steps_yields_unchanged_model() -> None:
    model = BatchNormNet()
    algo = metaopt.MAML(model, inner_lr=0.1)
    with algo.adapt(Task(0), steps=0) as adapted:
        assert all(isinstance(p, nn.Parameter) for p in adapted.parameters())


def test_state_restored_helper_catches_a_change() -> None:
    # The helper itself must be able to fail.
    model = BatchNormNet()
    with pytest.raises(AssertionError, match="param 'body.0.weight' changed"):
        assert_state_restored(model, None, lambda: model.body[0].weight.data[0, 0].add_(1e-6))
    with pytest.raises(AssertionError, match="buffer"):
        assert_state_restored(model, None, lambda: model.body[1].running_var.mul_(2))
    with pytest.raises(AssertionError, match="original Parameter"):
        assert_state_restored(
            model,
            None,
            lambda: setattr(model.body[3], "bias", nn.Parameter(model.body[3].bias.clone())),
        )
