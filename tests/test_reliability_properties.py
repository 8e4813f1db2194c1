"""Properties over model architectures × algorithm × inner steps × inner optimiser × engine.

With and without BatchNorm (training or eval mode), a submodule applied twice (shared
parameters), frozen parameters: after ``meta_backward`` and after ``adapt`` the model and the inner
optimiser are restored bit for bit, nothing raises, and finite inputs give finite losses,
meta-gradients and outputs. Parameters tied across two submodules stay tied through the inner
steps (the tests at the end).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import metaopt
from metaopt.algorithms import ConjugateGradientError
from metaopt.testing import assert_state_restored

pytestmark = pytest.mark.usefixtures("one_thread")


@dataclass(frozen=True)
class Architecture:
    width: int
    batchnorm: bool
    shared: bool  # one hidden Linear applied twice
    frozen: str  # "none", "weight" (first layer's weight) or "layer" (the whole first layer)
    training: bool


class Net(nn.Module):
    def __init__(self, arch: Architecture, seed: int) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(torch.randint(2**31, (1,), generator=generator)))
            self.inp = nn.Linear(2, arch.width)
            self.bn = nn.BatchNorm1d(arch.width) if arch.batchnorm else None
            self.shared = nn.Linear(arch.width, arch.width) if arch.shared else None
            self.out = nn.Linear(arch.width, 1)
        if arch.frozen == "weight":
            self.inp.weight.requires_grad_(False)
        elif arch.frozen == "layer":
            self.inp.requires_grad_(False)
        self.double()
        self.train(arch.training)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.inp(x))
        if self.bn is not None:
            h = self.bn(h)
        if self.shared is not None:
            h = torch.tanh(self.shared(torch.tanh(self.shared(h))))
        return self.out(h)


class Regression:
    """One task: mean squared error on fixed support and query points."""

    def __init__(self, xs: torch.Tensor, ys: torch.Tensor, xq: torch.Tensor, yq: torch.Tensor):
        self.xs, self.ys, self.xq, self.yq = xs, ys, xq, yq

    def support_loss(self, model: nn.Module) -> torch.Tensor:
        return ((model(self.xs) - self.ys) ** 2).mean()

    def query_loss(self, model: nn.Module) -> torch.Tensor:
        return ((model(self.xq) - self.yq) ** 2).mean()


class RegressionBatch(list):
    """The same tasks, stacked for the vectorised engine (``BatchedTasks``)."""

    def _stack(self, name: str) -> torch.Tensor:
        return torch.stack([getattr(task, name) for task in self])

    def support_losses(self, forward: Any, step: int | None) -> torch.Tensor:
        return ((forward(self._stack("xs")) - self._stack("ys")) ** 2).mean(dim=(1, 2))

    def query_losses(self, forward: Any) -> torch.Tensor:
        return ((forward(self._stack("xq")) - self._stack("yq")) ** 2).mean(dim=(1, 2))


def make_tasks(count: int, seed: int, batched: bool) -> list[Regression]:
    g = torch.Generator().manual_seed(seed)

    def points(n: int) -> torch.Tensor:
        return torch.rand(n, 2, generator=g, dtype=torch.float64) * 2 - 1

    tasks = []
    for _ in range(count):
        xs, xq = points(5), points(5)
        w = torch.randn(2, 1, generator=g, dtype=torch.float64)
        tasks.append(Regression(xs, torch.sin(xs @ w), xq, torch.sin(xq @ w)))
    return RegressionBatch(tasks) if batched else tasks


def build(
    algo: str, model: nn.Module, lr: float, steps: int, inner: str, engine: str, anil: bool = False
):
    """``anil``: only the last trainable parameter adapts (ANIL's ``adapt=``)."""
    adapt = [[n for n, p in model.named_parameters() if p.requires_grad][-1]] if anil else None
    common = {"inner_lr": lr, "inner_steps": steps, "engine": engine, "adapt": adapt}
    if algo == "metasgd":
        return metaopt.MetaSGD(model, **common)
    if algo == "reptile":
        return metaopt.Reptile(model, inner_optimizer=inner, **common)
    if algo == "imaml":  # λ·lr ≤ 1.5 keeps the proximal inner steps stable
        return metaopt.IMAML(model, reg=5.0, cg_steps=50, inner_optimizer=inner, **common)
    return metaopt.MAML(model, first_order=algo == "fomaml", inner_optimizer=inner, **common)


architectures = st.builds(
    Architecture,
    width=st.integers(1, 4),
    batchnorm=st.booleans(),
    shared=st.booleans(),
    frozen=st.sampled_from(["none", "weight", "layer"]),
    training=st.booleans(),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    arch=architectures,
    algo=st.sampled_from(["maml", "fomaml", "metasgd", "reptile", "imaml"]),
    anil=st.booleans(),
    steps=st.integers(1, 3),
    inner=st.sampled_from(["sgd", "adam"]),
    lr=st.floats(1e-3, 0.3),
    engine=st.sampled_from(["auto", "loop"]),
    batched=st.booleans(),
    num_tasks=st.integers(1, 3),
    seed=st.integers(0, 2**16),
)
def test_restored_bit_for_bit_finite_and_no_surprise_exceptions(
    arch: Architecture,
    algo: str,
    anil: bool,
    steps: int,
    inner: str,
    lr: float,
    engine: str,
    batched: bool,
    num_tasks: int,
    seed: int,
) -> None:
    if algo == "metasgd":
        inner = "sgd"  # Meta-SGD's inner update is SGD with learned rates
    model = Net(arch, seed)
    learner = build(algo, model, lr, steps, inner, engine, anil)
    tasks = make_tasks(num_tasks, seed + 1, batched)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}

    results: dict[str, Any] = {}

    def meta_backward() -> None:
        try:
            results["metrics"] = learner.meta_backward(tasks)
        except ConjugateGradientError:  # iMAML's refusal of an unsolved system: an outcome
            results["refused"] = True

    assert_state_restored(model, learner.inner_optimizer, meta_backward)
    if results.get("refused"):  # ... that leaves .grad as it was (none) and the model intact
        assert all(p.grad is None for p in learner.meta_parameters())
        return
    metrics = results["metrics"]
    for values in (metrics.support_before, metrics.support_after, metrics.query):
        assert values.shape == (num_tasks,) and bool(torch.isfinite(values).all())
    for p in learner.meta_parameters():
        assert p.grad is not None and bool(torch.isfinite(p.grad).all())

    def adapt() -> None:
        with learner.adapt(tasks[0]) as adapted:
            results["outputs"] = adapted(tasks[0].xq).detach()
            for name, p in adapted.named_parameters():  # frozen parameters stay as they were
                if name in frozen:
                    assert torch.equal(p, frozen[name]), name

    assert_state_restored(model, learner.inner_optimizer, adapt)
    assert bool(torch.isfinite(results["outputs"]).all())


# -- parameters tied across two submodules: a core bug ---------------------------------------------


class Tied(nn.Module):
    """Two Linear layers holding one weight Parameter (tied weights)."""

    def __init__(self) -> None:
        super().__init__()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            self.a, self.b = nn.Linear(2, 2), nn.Linear(2, 2)
        self.b.weight = self.a.weight
        self.double()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.tanh(self.a(x))).sum(-1, keepdim=True)


def _tied_reference(task: Regression, lr: float, steps: int) -> torch.Tensor:
    """The tied weight after ``steps`` plain SGD steps on the tied model (autograd by hand)."""
    model = Tied()
    params = [p.detach().clone().requires_grad_() for p in model.parameters()]  # w, a.bias, b.bias

    def loss(w: torch.Tensor, a_bias: torch.Tensor, b_bias: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(task.xs @ w.T + a_bias)
        return (((h @ w.T + b_bias).sum(-1, keepdim=True) - task.ys) ** 2).mean()

    for _ in range(steps):
        grads = torch.autograd.grad(loss(*params), params)
        params = [p - lr * g for p, g in zip(params, grads, strict=True)]
    return params[0].detach()


@pytest.mark.parametrize("algo", ["maml", "metasgd"])
def test_tied_weights_stay_tied_through_inner_steps(algo: str) -> None:
    task = make_tasks(1, 0, batched=False)[0]
    learner = build(algo, Tied(), 0.1, 2, "sgd", "loop")
    expected = _tied_reference(task, 0.1, 2)
    with learner.adapt(task) as adapted:
        assert torch.allclose(adapted.a.weight, expected)
        assert torch.allclose(adapted.b.weight, expected)


def test_reptile_with_tied_weights() -> None:
    task = make_tasks(1, 0, batched=False)[0]
    learner = build("reptile", Tied(), 0.1, 2, "sgd", "loop")
    learner.meta_backward([task])
    expected = learner.model.a.weight.detach() - _tied_reference(task, 0.1, 2)  # θ − θ̃
    assert torch.allclose(learner.model.a.weight.grad, expected)
