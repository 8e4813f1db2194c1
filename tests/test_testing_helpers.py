"""The helpers of ``metaopt.testing`` must themselves be right, and must fail on wrong gradients.

Each helper is run against a deliberately wrong meta-gradient (scaled by 1.001, one entry off,
the second-order term dropped, the learned-rate gradient lost, Reptile's sign flipped) and
against leaky state handling, and must raise there. The closed forms are checked against finite
differences computed in NumPy alone, so that they do not share a mistake with autograd.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
import pytest
import torch
import torchopt
from core_helpers import BatchNormNet, TanhMLP
from torch import nn

import metaopt
from metaopt import testing as mt
from metaopt.inner import InnerOptimizer, inner_transform

# -- small float64 problems -------------------------------------------------------------------


class RegressionTask:
    def __init__(self, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(8, 2, generator=g, dtype=torch.float64)
        self.y = torch.sin(self.x.sum(dim=1, keepdim=True) + seed)

    def support_loss(self, model: nn.Module) -> torch.Tensor:
        return ((model(self.x[:4]) - self.y[:4]) ** 2).mean()

    def query_loss(self, model: nn.Module) -> torch.Tensor:
        return ((model(self.x[4:]) - self.y[4:]) ** 2).mean()


TASKS = [RegressionTask(0), RegressionTask(1)]


def linear_problem(dim: int = 5, num_tasks: int = 3) -> tuple[np.ndarray, list[mt.LinearTask]]:
    rng = np.random.default_rng(7)
    theta = rng.normal(size=dim)
    return theta, list(mt.random_linear_tasks(num_tasks, dim, rng))


# -- deliberately wrong algorithms ------------------------------------------------------------


class ScaledMAML(metaopt.MAML):
    """Every meta-gradient entry 0.1% too large."""

    def meta_backward(self, tasks: Sequence, *, scale: float | None = None) -> metaopt.MetaMetrics:
        metrics = super().meta_backward(tasks, scale=scale)
        for p in self.meta_parameters():
            p.grad.mul_(1.001)
        return metrics


class OneEntryOff(metaopt.MAML):
    """One entry of the first layer's weight off by 1e-4; everything else right."""

    def meta_backward(self, tasks: Sequence, *, scale: float | None = None) -> metaopt.MetaMetrics:
        metrics = super().meta_backward(tasks, scale=scale)
        self.model.net[0].weight.grad[2, 1] += 1e-4
        return metrics


class DroppedSecondOrder(metaopt.MAML):
    """Claims to be second-order MAML but takes first-order inner steps."""

    def meta_backward(self, tasks: Sequence, *, scale: float | None = None) -> metaopt.MetaMetrics:
        self.first_order = True
        try:
            return super().meta_backward(tasks, scale=scale)
        finally:
            self.first_order = False


class LostRateGradient(metaopt.MetaSGD):
    """Meta-SGD whose learned rates get half their meta-gradient."""

    def meta_backward(self, tasks: Sequence, *, scale: float | None = None) -> metaopt.MetaMetrics:
        metrics = super().meta_backward(tasks, scale=scale)
        for rate in self.inner_lrs:
            rate.grad.mul_(0.5)
        return metrics


class FlippedReptile(metaopt.Reptile):
    """Reptile writing θ̃ − θ into .grad instead of θ − θ̃."""

    def meta_backward(self, tasks: Sequence, *, scale: float | None = None) -> metaopt.MetaMetrics:
        metrics = super().meta_backward(tasks, scale=scale)
        for p in self.meta_parameters():
            p.grad.neg_()
        return metrics


# -- check_meta_gradient, finite differences --------------------------------------------------


@pytest.mark.parametrize("algorithm", [metaopt.MAML, metaopt.MetaSGD])
def test_finite_differences_accept_a_right_meta_gradient(algorithm: type) -> None:
    mt.check_meta_gradient(algorithm(TanhMLP(hidden=3), inner_lr=0.3, inner_steps=2), TASKS)


@pytest.mark.parametrize(
    ("wrong", "parameter"),
    [
        (ScaledMAML, r"net\.[02]\.(weight|bias)"),
        (DroppedSecondOrder, r"net\.[02]\.(weight|bias)"),
        (LostRateGradient, r"inner_lrs\[net\.[02]\.(weight|bias)\]"),
    ],
)
def test_finite_differences_reject_a_wrong_meta_gradient(wrong: type, parameter: str) -> None:
    algo = wrong(TanhMLP(hidden=3), inner_lr=0.3, inner_steps=2)
    with pytest.raises(AssertionError, match=f"meta-gradient of {parameter}"):
        mt.check_meta_gradient(algo, TASKS)


def test_finite_difference_error_names_the_worst_entry_and_both_values() -> None:
    algo = OneEntryOff(TanhMLP(hidden=3), inner_lr=0.3, inner_steps=2)
    with pytest.raises(AssertionError) as failure:
        mt.check_meta_gradient(algo, TASKS)
    message = str(failure.value)
    assert message.startswith("meta-gradient of net.0.weight[2, 1] is ")
    got, reference = (float(v) for v in re.findall(r"(-?\d\.\d+(?:e-?\d+)?)", message)[:2])
    assert got - reference == pytest.approx(1e-4, rel=1e-3)
    assert "finite differences give" in message


def test_finite_differences_refuse_what_they_cannot_check() -> None:
    with pytest.raises(ValueError, match="no exact meta-gradient"):
        mt.check_meta_gradient(metaopt.MAML(TanhMLP(hidden=3), first_order=True), TASKS)
    with pytest.raises(ValueError, match="no exact meta-gradient"):
        mt.check_meta_gradient(metaopt.Reptile(TanhMLP(hidden=3)), TASKS)
    with pytest.raises(ValueError, match="float64"):
        mt.check_meta_gradient(metaopt.MAML(TanhMLP(hidden=3).float()), TASKS)
    with pytest.raises(ValueError, match="method must be one of"):
        mt.check_meta_gradient(metaopt.MAML(TanhMLP(hidden=3)), TASKS, method="autograd")


# -- check_meta_gradient, closed forms ---------------------------------------------------------

RIGHT = {
    "maml": lambda m: metaopt.MAML(m, inner_lr=0.3, inner_steps=3),
    "fomaml": lambda m: metaopt.MAML(m, inner_lr=0.3, inner_steps=3, first_order=True),
    "metasgd": lambda m: metaopt.MetaSGD(m, inner_lr=0.3, inner_steps=3),
    "metasgd-first-order": lambda m: metaopt.MetaSGD(
        m, inner_lr=0.3, inner_steps=3, first_order=True
    ),
    "reptile": lambda m: metaopt.Reptile(m, inner_lr=0.3, inner_steps=3),
}


def _nonuniform_rates(algo: metaopt.MetaSGD) -> None:
    with torch.no_grad():
        for i, rate in enumerate(algo.inner_lrs):
            rate.mul_(torch.linspace(0.5, 1.5, rate.numel(), dtype=rate.dtype) + 0.1 * i)


@pytest.mark.parametrize("name", sorted(RIGHT))
def test_closed_form_accepts_every_right_algorithm(name: str) -> None:
    theta, tasks = linear_problem()
    algo = RIGHT[name](mt.LinearModel(theta, split=2))
    if isinstance(algo, metaopt.MetaSGD):
        _nonuniform_rates(algo)
    mt.check_meta_gradient(algo, tasks, method="closed_form", rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(
    ("wrong", "parameter"),
    [
        (ScaledMAML, r"(weight|bias)"),
        (DroppedSecondOrder, r"(weight|bias)"),
        (LostRateGradient, r"inner_lrs\[(weight|bias)\]"),
        (FlippedReptile, r"(weight|bias)"),
    ],
)
def test_closed_form_rejects_a_wrong_meta_gradient(wrong: type, parameter: str) -> None:
    theta, tasks = linear_problem()
    algo = wrong(mt.LinearModel(theta), inner_lr=0.3, inner_steps=3)
    with pytest.raises(AssertionError, match=f"meta-gradient of {parameter}.* the closed form"):
        mt.check_meta_gradient(algo, tasks, method="closed_form")


def test_closed_form_refuses_what_it_does_not_cover() -> None:
    theta, tasks = linear_problem()
    with pytest.raises(ValueError, match="LinearTask"):
        mt.check_meta_gradient(metaopt.MAML(TanhMLP(hidden=3)), TASKS, method="closed_form")
    adam = metaopt.MAML(mt.LinearModel(theta), inner_optimizer="adam")
    with pytest.raises(ValueError, match="inner SGD only"):
        mt.check_meta_gradient(adam, tasks, method="closed_form")
    _, wider = linear_problem(dim=6)
    with pytest.raises(ValueError, match="5 columns"):
        mt.check_meta_gradient(metaopt.MAML(mt.LinearModel(theta)), wider, method="closed_form")


# -- the closed forms themselves, against NumPy finite differences ----------------------------


def _inner(task: mt.LinearTask, theta: np.ndarray, rates: np.ndarray, steps: int) -> np.ndarray:
    for _ in range(steps):
        theta = theta - rates * (task.A.T @ (task.A @ theta - task.b))
    return theta


def _query(task: mt.LinearTask, theta: np.ndarray) -> float:
    return 0.5 * float(np.sum((task.C @ theta - task.d) ** 2))


def _numpy_fd(f, x: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    grad = np.zeros_like(x)
    for i in range(len(x)):
        step = np.zeros_like(x)
        step[i] = eps
        grad[i] = (f(x + step) - f(x - step)) / (2 * eps)
    return grad


@pytest.mark.parametrize("steps", [1, 4])
def test_closed_forms_match_numpy_finite_differences(steps: int) -> None:
    theta, tasks = linear_problem()
    rates = np.linspace(0.1, 0.4, len(theta))

    def meta_loss(th: np.ndarray, r: np.ndarray) -> float:
        return float(np.mean([_query(t, _inner(t, th, r, steps)) for t in tasks]))

    uniform = np.full(len(theta), 0.3)
    maml = mt.maml_meta_gradient(tasks, theta, 0.3, steps)
    np.testing.assert_allclose(maml, _numpy_fd(lambda th: meta_loss(th, uniform), theta), rtol=1e-6)
    g_theta, g_rates = mt.metasgd_meta_gradient(tasks, theta, rates, steps)
    np.testing.assert_allclose(
        g_theta, _numpy_fd(lambda th: meta_loss(th, rates), theta), rtol=1e-6
    )
    np.testing.assert_allclose(
        g_rates, _numpy_fd(lambda r: meta_loss(theta, r), rates), rtol=1e-6, atol=1e-10
    )
    # A perturbed gradient does not pass the same comparison.
    with pytest.raises(AssertionError):
        np.testing.assert_allclose(
            1.001 * maml, _numpy_fd(lambda th: meta_loss(th, uniform), theta), rtol=1e-6
        )


@pytest.mark.parametrize("steps", [1, 4])
@pytest.mark.parametrize("uniform", [True, False])
def test_first_order_closed_forms_hold_inner_gradients_constant(steps: int, uniform: bool) -> None:
    theta, tasks = linear_problem()
    rates = np.full(len(theta), 0.3) if uniform else np.linspace(0.1, 0.4, len(theta))

    def frozen_meta_loss(th: np.ndarray, r: np.ndarray) -> float:
        # θₙ = θ − α ∘ Σₖ gₖ with the inner gradients gₖ of the unperturbed path held constant.
        total = 0.0
        for t in tasks:
            path_grads, x = [], theta
            for _ in range(steps):
                g = t.A.T @ (t.A @ x - t.b)
                path_grads.append(g)
                x = x - rates * g
            total += _query(t, th - r * np.sum(path_grads, axis=0))
        return total / len(tasks)

    g_theta, g_rates = mt.metasgd_meta_gradient(tasks, theta, rates, steps, first_order=True)
    np.testing.assert_allclose(
        g_theta, _numpy_fd(lambda th: frozen_meta_loss(th, rates), theta), rtol=1e-6
    )
    np.testing.assert_allclose(
        g_rates, _numpy_fd(lambda r: frozen_meta_loss(theta, r), rates), rtol=1e-6, atol=1e-10
    )
    if uniform:
        fomaml = mt.fomaml_meta_gradient(tasks, theta, 0.3, steps)
        np.testing.assert_allclose(fomaml, g_theta, rtol=1e-12)
    # The first-order gradients are not the exact ones.
    exact_theta, exact_rates = mt.metasgd_meta_gradient(tasks, theta, rates, steps)
    assert np.linalg.norm(g_theta - exact_theta) > 1e-3 * np.linalg.norm(exact_theta)
    if steps > 1:
        assert np.linalg.norm(g_rates - exact_rates) > 1e-3 * np.linalg.norm(exact_rates)


def test_reptile_closed_form_is_the_sum_of_inner_steps() -> None:
    theta, tasks = linear_problem()
    direction = mt.reptile_meta_gradient(tasks, theta, 0.3, 2)
    expected = np.mean([theta - _inner(t, theta, np.full(len(theta), 0.3), 2) for t in tasks], 0)
    np.testing.assert_allclose(direction, expected, rtol=1e-12)
    # One step: θ − θ̃ = α ∇L_s(θ), the first-order MAML gradient's support-side counterpart.
    one = mt.reptile_meta_gradient(tasks, theta, 0.3, 1)
    support = np.mean([t.A.T @ (t.A @ theta - t.b) for t in tasks], axis=0)
    np.testing.assert_allclose(one, 0.3 * support, rtol=1e-12)


# -- assert_state_restored --------------------------------------------------------------------


def _loss(model: nn.Module) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return model(torch.randn(6, 3, generator=g)).pow(2).mean()


def test_state_restored_accepts_metaopt_isolation() -> None:
    model = BatchNormNet(width=4)
    optimizer = InnerOptimizer(model, inner_transform("adam", 0.1))

    def adapt() -> None:
        with metaopt.isolated(model, optimizer):
            optimizer.step(_loss(model))

    mt.assert_state_restored(model, optimizer, adapt)


def test_state_restored_catches_buffers_kept_by_reference() -> None:
    # The bug `metaopt.isolated` guards against: buffers saved by reference see BatchNorm's
    # in-place update of its running statistics, so "restoring" them restores nothing.
    model = BatchNormNet(width=4)
    optimizer = InnerOptimizer(model, inner_transform("sgd", 0.1))

    def leaky_adapt() -> None:
        saved = torchopt.extract_state_dict(model, by="reference", detach_buffers=False)
        optimizer.step(_loss(model))
        torchopt.recover_state_dict(model, saved)

    with pytest.raises(AssertionError, match="buffer 'body.1.running_mean' changed"):
        mt.assert_state_restored(model, optimizer, leaky_adapt)


def test_state_restored_catches_optimizer_state() -> None:
    model = BatchNormNet(width=4).eval()
    optimizer = InnerOptimizer(model, inner_transform("adam", 0.1))
    optimizer.step(_loss(model))  # the moments are now non-zero

    def forgets_the_optimizer() -> None:
        with metaopt.isolated(model):  # the model comes back, Adam's moments do not
            optimizer.step(_loss(model))

    with pytest.raises(AssertionError, match="optimizer state changed"):
        mt.assert_state_restored(model, optimizer, forgets_the_optimizer)


def test_state_restored_catches_modes_and_single_bits() -> None:
    model = BatchNormNet(width=4)
    with pytest.raises(AssertionError, match="train/eval mode"):
        mt.assert_state_restored(model, None, model.eval)
    model.train()
    with torch.no_grad():
        model.body[0].bias[0] = 0.0
    with pytest.raises(AssertionError, match="param 'body.0.bias' changed"):  # 0.0 -> -0.0
        mt.assert_state_restored(model, None, lambda: model.body[0].bias.data[0].mul_(-1))
    with torch.no_grad():
        model.body[0].bias[1] = float("nan")
    mt.assert_state_restored(model, None, lambda: None)  # NaN equals itself bit for bit
