"""Meta-gradients of the four algorithms against closed forms, finite differences and other code."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchopt
from core_helpers import TanhMLP
from torch import nn

import metaopt
from metaopt import testing as mt


def _flat_grad(model: nn.Module) -> np.ndarray:
    return torch.cat([p.grad.reshape(-1) for p in model.parameters()]).numpy()


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


class Quadratic(nn.Module):
    def __init__(self, a0: float) -> None:
        super().__init__()
        self.a = nn.Parameter(torch.tensor(a0, dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.a * x**2


@pytest.mark.parametrize(
    ("a0", "x0", "lr"), [(1.0, 2.0, 1.0), (0.5, -1.5, 0.3), (-2.0, 0.7, 0.05), (3.0, 1.1, 2.0)]
)
def test_bilevel_closed_form_through_torchopt(a0: float, x0: float, lr: float) -> None:
    # The seed's example: inner loss a·x², one SGD step, outer loss a₁·x²: ∂L/∂x = −4ηx³ + 2a₀x.
    net = Quadratic(a0)
    x = nn.Parameter(torch.tensor(x0, dtype=torch.float64))
    optim = torchopt.MetaSGD(net, lr=lr)
    optim.step(net(x))
    net(x).backward()
    assert x.grad.item() == pytest.approx(-4 * lr * x0**3 + 2 * a0 * x0, rel=1e-12)


def test_bilevel_minus_28_through_metaopt() -> None:
    net = Quadratic(1.0)
    x = nn.Parameter(torch.tensor(2.0, dtype=torch.float64))

    class Task:
        def support_loss(self, model: nn.Module) -> torch.Tensor:
            return model(x)

        query_loss = support_loss

    metaopt.MAML(net, inner_lr=1.0).meta_backward([Task()])
    assert x.grad.item() == -28.0


@pytest.fixture
def linear_setup() -> tuple[np.ndarray, list[mt.LinearTask]]:
    rng = np.random.default_rng(0)
    theta = rng.normal(size=7)
    return theta, mt.random_linear_tasks(4, 7, rng)


ENGINES = pytest.mark.parametrize("engine", ["loop", "vmap"])


@ENGINES
@pytest.mark.parametrize("steps", [1, 3])
@pytest.mark.parametrize("first_order", [False, True])
def test_maml_closed_form(linear_setup, steps: int, first_order: bool, engine: str) -> None:
    theta, tasks = linear_setup
    model = mt.LinearModel(theta)
    algo = metaopt.MAML(
        model, inner_lr=0.3, inner_steps=steps, first_order=first_order, engine=engine
    )
    algo.meta_backward(tasks)
    reference = (mt.fomaml_meta_gradient if first_order else mt.maml_meta_gradient)(
        tasks, theta, 0.3, steps
    )
    assert _rel(_flat_grad(model), reference) <= 1e-10


@ENGINES
@pytest.mark.parametrize("steps", [1, 3])
def test_metasgd_closed_form_with_nonuniform_rates(linear_setup, steps: int, engine: str) -> None:
    theta, tasks = linear_setup
    model = mt.LinearModel(theta, split=3)  # weight: 3 entries, bias: 4; TorchOpt sees bias first
    algo = metaopt.MetaSGD(model, inner_lr=0.1, inner_steps=steps, engine=engine)
    rates = np.random.default_rng(1).uniform(0.05, 0.4, size=7)
    with torch.no_grad():
        algo.inner_lrs[0].copy_(torch.as_tensor(rates[:3]))
        algo.inner_lrs[1].copy_(torch.as_tensor(rates[3:]))
    algo.meta_backward(tasks)
    g_theta, g_rates = mt.metasgd_meta_gradient(tasks, theta, rates, steps)
    assert _rel(_flat_grad(model), g_theta) <= 1e-10
    got_rates = torch.cat([a.grad.reshape(-1) for a in algo.inner_lrs]).numpy()
    assert _rel(got_rates, g_rates) <= 1e-10


@ENGINES
@pytest.mark.parametrize("steps", [1, 3])
def test_reptile_closed_form(linear_setup, steps: int, engine: str) -> None:
    theta, tasks = linear_setup
    model = mt.LinearModel(theta)
    metaopt.Reptile(model, inner_lr=0.3, inner_steps=steps, engine=engine).meta_backward(tasks)
    reference = mt.reptile_meta_gradient(tasks, theta, 0.3, steps)
    assert _rel(_flat_grad(model), reference) <= 1e-10


def test_reptile_outer_sgd_step_is_interpolation(linear_setup) -> None:
    # θ ← θ + ε(θ̃ − θ) for one task with plain SGD at lr ε.
    theta, tasks = linear_setup
    model = mt.LinearModel(theta)
    outer = torch.optim.SGD(model.parameters(), lr=0.25)
    metaopt.Reptile(model, inner_lr=0.3, inner_steps=2).meta_backward(tasks[:1])
    outer.step()
    adapted = mt._inner_path(tasks[0], theta, np.full(7, 0.3), 2)[-1]
    expected = theta + 0.25 * (adapted - theta)
    got = torch.cat([p.detach().reshape(-1) for p in model.parameters()]).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-12)


class RegressionTask:
    def __init__(self, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        self.xs, self.xq = (
            torch.randn(6, 2, generator=g).double(),
            torch.randn(6, 2, generator=g).double(),
        )
        w = torch.randn(2, 1, generator=g).double()
        self.ys, self.yq = torch.sin(self.xs @ w), torch.sin(self.xq @ w)

    def support_loss(self, model: nn.Module) -> torch.Tensor:
        return ((model(self.xs) - self.ys) ** 2).mean()

    def query_loss(self, model: nn.Module) -> torch.Tensor:
        return ((model(self.xq) - self.yq) ** 2).mean()


@pytest.mark.parametrize("steps", [1, 2])
@pytest.mark.parametrize("kind", ["maml", "maml-adam", "metasgd"])
def test_finite_differences_on_tanh_mlp(kind: str, steps: int) -> None:
    model = TanhMLP()
    if kind == "metasgd":
        algo = metaopt.MetaSGD(model, inner_lr=0.2, inner_steps=steps)
        with torch.no_grad():  # non-uniform rates make the check sharper
            for rate in algo.inner_lrs:
                rate.mul_(
                    torch.rand(
                        rate.shape, generator=torch.Generator().manual_seed(3), dtype=rate.dtype
                    )
                    + 0.5
                )
    else:
        optimizer = "adam" if kind == "maml-adam" else "sgd"
        algo = metaopt.MAML(model, inner_lr=0.2, inner_steps=steps, inner_optimizer=optimizer)
    mt.check_meta_gradient(algo, [RegressionTask(1), RegressionTask(2)], rtol=1e-6, atol=1e-9)


def test_metasgd_with_equal_rates_is_maml() -> None:
    tasks = [RegressionTask(s) for s in range(3)]
    maml_model, sgd_model = TanhMLP(), TanhMLP()
    metaopt.MAML(maml_model, inner_lr=0.15, inner_steps=2).meta_backward(tasks)
    metaopt.MetaSGD(sgd_model, inner_lr=0.15, inner_steps=2).meta_backward(tasks)
    np.testing.assert_allclose(
        _flat_grad(sgd_model), _flat_grad(maml_model), rtol=1e-12, atol=1e-15
    )


class LinearSupportTask:
    """Support loss linear in θ (zero Hessian): first- and second-order MAML must agree."""

    def __init__(self, seed: int) -> None:
        self.inner = RegressionTask(seed)
        self.c = torch.randn(1, generator=torch.Generator().manual_seed(seed)).double()

    def support_loss(self, model: nn.Module) -> torch.Tensor:
        return sum((p * self.c).sum() for p in model.parameters())

    def query_loss(self, model: nn.Module) -> torch.Tensor:
        return self.inner.query_loss(model)


def test_first_order_equals_second_order_for_linear_support() -> None:
    tasks = [LinearSupportTask(s) for s in range(3)]
    first, second = TanhMLP(), TanhMLP()
    metaopt.MAML(first, inner_lr=0.1, inner_steps=3, first_order=True).meta_backward(tasks)
    metaopt.MAML(second, inner_lr=0.1, inner_steps=3).meta_backward(tasks)
    np.testing.assert_allclose(_flat_grad(first), _flat_grad(second), rtol=1e-12, atol=1e-15)


def test_first_order_differs_from_second_order_in_general() -> None:
    # Guards the test above: with a curved support loss the two must differ.
    tasks = [RegressionTask(s) for s in range(3)]
    first, second = TanhMLP(), TanhMLP()
    metaopt.MAML(first, inner_lr=0.5, inner_steps=2, first_order=True).meta_backward(tasks)
    metaopt.MAML(second, inner_lr=0.5, inner_steps=2).meta_backward(tasks)
    assert _rel(_flat_grad(first), _flat_grad(second)) > 1e-3


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_inner_step_matches_torchopt_meta_optimizers(optimizer: str) -> None:
    # With create_graph=True metaopt's inner step is TorchOpt's MetaSGD / MetaAdam step.
    task = RegressionTask(4)
    ours, theirs = TanhMLP(), TanhMLP()
    metaopt.MAML(ours, inner_lr=0.1, inner_steps=3, inner_optimizer=optimizer).meta_backward([task])
    if optimizer == "sgd":
        inner = torchopt.MetaSGD(theirs, lr=0.1)
    else:
        inner = torchopt.MetaAdam(theirs, lr=0.1, eps_root=1e-8)
    # TorchOpt computes Adam's bias correction in the default dtype; with float64 as the default
    # it is right, and metaopt's (computed in float64 always) must give the same meta-gradient.
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        state = torchopt.extract_state_dict(theirs)
        for _ in range(3):
            inner.step(task.support_loss(theirs))
        task.query_loss(theirs).backward()
        torchopt.recover_state_dict(theirs, state)
    finally:
        torch.set_default_dtype(default)
    np.testing.assert_allclose(_flat_grad(ours), _flat_grad(theirs), rtol=1e-12, atol=1e-15)


def test_adam_inner_loop_meta_gradient_stays_finite_over_many_steps() -> None:
    model = TanhMLP()
    metaopt.MAML(model, inner_lr=0.05, inner_steps=8, inner_optimizer="adam").meta_backward(
        [RegressionTask(0)]
    )
    assert np.all(np.isfinite(_flat_grad(model)))


@pytest.mark.parametrize("first_order", [False, True])
def test_against_higher(first_order: bool) -> None:
    higher = pytest.importorskip("higher")
    tasks = [RegressionTask(s) for s in range(3)]
    ours, theirs = TanhMLP(), TanhMLP()
    metaopt.MAML(ours, inner_lr=0.1, inner_steps=2, first_order=first_order).meta_backward(tasks)
    sgd = torch.optim.SGD(theirs.parameters(), lr=0.1)
    for task in tasks:
        # copy_initial_weights=False: the default True would cut the meta-gradient.
        with higher.innerloop_ctx(
            theirs, sgd, copy_initial_weights=False, track_higher_grads=not first_order
        ) as (fmodel, diffopt):
            for _ in range(2):
                diffopt.step(task.support_loss(fmodel))
            query = task.query_loss(fmodel) / len(tasks)
            if not first_order:
                query.backward()
                continue
            # higher detaches θ' from θ here; route the query gradient at θ' back to θ by hand.
            for p, g in zip(
                theirs.parameters(), torch.autograd.grad(query, fmodel.parameters()), strict=True
            ):
                p.grad = g if p.grad is None else p.grad + g
    np.testing.assert_allclose(_flat_grad(ours), _flat_grad(theirs), rtol=1e-10, atol=1e-14)


def test_meta_backward_accumulates_and_scale_weights_tasks(linear_setup) -> None:
    theta, tasks = linear_setup
    whole = mt.LinearModel(theta)
    metaopt.MAML(whole, inner_lr=0.3).meta_backward(tasks)
    # Two shards, each weighted by 1/len(all tasks), accumulate to the full meta-gradient.
    sharded = mt.LinearModel(theta)
    algo = metaopt.MAML(sharded, inner_lr=0.3)
    algo.meta_backward(tasks[:1], scale=1 / len(tasks))
    algo.meta_backward(tasks[1:], scale=1 / len(tasks))
    np.testing.assert_allclose(_flat_grad(sharded), _flat_grad(whole), rtol=1e-12)


def test_metrics_report_losses_before_and_after(linear_setup) -> None:
    theta, tasks = linear_setup
    metrics = metaopt.MAML(mt.LinearModel(theta), inner_lr=0.3, inner_steps=3).meta_backward(tasks)
    model = mt.LinearModel(theta)
    expected_before = [t.support_loss(model).item() for t in tasks]
    np.testing.assert_allclose(metrics.support_before.numpy(), expected_before, rtol=1e-12)
    assert metrics.support_after.shape == metrics.query.shape == (len(tasks),)
    assert bool((metrics.support_after < metrics.support_before).all())


@ENGINES
@pytest.mark.parametrize("name", ["maml", "metasgd", "reptile"])
def test_support_after_is_the_support_loss_at_the_adapted_parameters(
    linear_setup, engine, name
) -> None:
    theta, tasks = linear_setup
    model = mt.LinearModel(theta)
    cls = {"maml": metaopt.MAML, "metasgd": metaopt.MetaSGD, "reptile": metaopt.Reptile}[name]
    metrics = cls(model, inner_lr=0.3, inner_steps=2, engine=engine).meta_backward(tasks)
    expected = []
    for task in tasks:
        adapted = mt._inner_path(task, theta, np.full(len(theta), 0.3), 2)[-1]
        expected.append(0.5 * np.sum((task.A @ adapted - task.b) ** 2))
    np.testing.assert_allclose(metrics.support_after.numpy(), expected, rtol=1e-12)
    # Computed on demand, once: the model was left as it was in the meantime.
    assert metrics.support_after is metrics.support_after
