"""The vectorised engine gives the loop engine's meta-gradients, for every algorithm."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import metaopt


class RegressionBatch(list):
    """Tasks y = sin(x·w) with stacked data; usable by both engines."""

    def __init__(self, num_tasks: int, dtype: torch.dtype, seed: int = 0, points: int = 8) -> None:
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(num_tasks, 2, points, 3, generator=g, dtype=dtype)
        w = torch.randn(num_tasks, 1, 3, 1, generator=g, dtype=dtype)
        y = torch.sin(x @ w)
        self.xs, self.xq = x[:, 0], x[:, 1]
        self.ys, self.yq = y[:, 0], y[:, 1]
        super().__init__(Task(self, b) for b in range(num_tasks))

    def support_losses(self, forward, step):
        return ((forward(self.xs) - self.ys) ** 2).mean(dim=(1, 2))

    def query_losses(self, forward):
        return ((forward(self.xq) - self.yq) ** 2).mean(dim=(1, 2))


class Task:
    def __init__(self, batch: RegressionBatch, index: int) -> None:
        self.batch, self.index = batch, index

    def support_loss(self, model):
        return ((model(self.batch.xs[self.index]) - self.batch.ys[self.index]) ** 2).mean()

    def query_loss(self, model):
        return ((model(self.batch.xq[self.index]) - self.batch.yq[self.index]) ** 2).mean()


def mlp(dtype: torch.dtype, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(3, 16), nn.Tanh(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 1)
    ).to(dtype)


def build(name: str, model: nn.Module, engine: str, steps: int) -> metaopt.MetaLearner:
    if name == "metasgd":
        algo = metaopt.MetaSGD(model, inner_lr=0.05, inner_steps=steps, engine=engine)
        with torch.no_grad():  # non-uniform rates, the same for both engines
            for i, rate in enumerate(algo.inner_lrs):
                rate.mul_(
                    1.0
                    + 0.1 * torch.arange(rate.numel(), dtype=rate.dtype).reshape(rate.shape).sin()
                    + i
                )
        return algo
    if name == "reptile":
        return metaopt.Reptile(model, inner_lr=0.05, inner_steps=steps, engine=engine)
    optimizer = "adam" if name.endswith("adam") else "sgd"
    first_order = name.startswith("fomaml")
    return metaopt.MAML(
        model,
        inner_lr=0.05,
        inner_steps=steps,
        first_order=first_order,
        inner_optimizer=optimizer,
        engine=engine,
    )


def meta_gradient(algo: metaopt.MetaLearner, tasks) -> tuple[torch.Tensor, metaopt.MetaMetrics]:
    metrics = algo.meta_backward(tasks)
    return torch.cat([p.grad.reshape(-1) for p in algo.meta_parameters()]), metrics


NAMES = ["maml", "fomaml", "maml-adam", "fomaml-adam", "metasgd", "reptile"]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize(("dtype", "tolerance"), [(torch.float32, 1e-6), (torch.float64, 1e-12)])
@pytest.mark.parametrize("steps", [1, 3])
def test_engines_agree(name: str, dtype: torch.dtype, tolerance: float, steps: int) -> None:
    tasks = RegressionBatch(5, dtype)
    loop_grad, loop_metrics = meta_gradient(build(name, mlp(dtype), "loop", steps), tasks)
    vmap_grad, vmap_metrics = meta_gradient(build(name, mlp(dtype), "vmap", steps), tasks)
    relative = (vmap_grad - loop_grad).norm() / loop_grad.norm()
    if name == "maml-adam" and dtype == torch.float32:
        # Adam's step g/√(g² + ε_root) differentiated again has terms ~ ε_root/|g|³: float32
        # rounding of g (summed in another order by each engine) is amplified to a few 1e-6.
        # The same comparison in float64 holds to 1e-12 (the float64 case of this test).
        tolerance = 1e-5
    assert relative <= tolerance, f"relative difference {relative:.3g}"
    for field in ("support_before", "support_after", "query"):
        torch.testing.assert_close(
            getattr(vmap_metrics, field), getattr(loop_metrics, field), rtol=10 * tolerance, atol=0
        )


def test_auto_uses_vmap_for_batches_and_loop_for_lists(monkeypatch) -> None:
    calls = []
    import metaopt.algorithms as algorithms

    original = algorithms.inner_loop
    monkeypatch.setattr(
        algorithms, "inner_loop", lambda *a, **k: calls.append(1) or original(*a, **k)
    )
    tasks = RegressionBatch(3, torch.float64)
    algo = metaopt.MAML(mlp(torch.float64), inner_lr=0.1)
    algo.meta_backward(tasks)
    assert calls == [1]
    algo.meta_backward(list(tasks))  # a plain list of tasks: the loop engine
    assert calls == [1]


def test_vmap_engine_restores_nothing_because_it_touches_nothing() -> None:
    from metaopt.testing import assert_state_restored

    model = mlp(torch.float64)
    algo = metaopt.MetaSGD(model, inner_lr=0.1, inner_steps=2, engine="vmap")
    assert_state_restored(
        model, algo.inner_optimizer, lambda: algo.meta_backward(RegressionBatch(3, torch.float64))
    )


def test_frozen_parameters_in_the_vmap_engine() -> None:
    tasks = RegressionBatch(4, torch.float64)
    grads = {}
    for engine in ("loop", "vmap"):
        model = mlp(torch.float64)
        model[2].weight.requires_grad_(False)
        grads[engine], _ = meta_gradient(
            metaopt.MetaSGD(model, inner_lr=0.05, inner_steps=2, engine=engine), tasks
        )
        assert model[2].weight.grad is None
    torch.testing.assert_close(grads["vmap"], grads["loop"], rtol=1e-12, atol=0)


class Tied(nn.Module):
    """One Linear used twice: a shared parameter."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.inp, self.hidden, self.out = nn.Linear(3, 8), nn.Linear(8, 8), nn.Linear(8, 1)

    def forward(self, x):
        h = torch.tanh(self.inp(x))
        h = torch.tanh(self.hidden(h))
        return self.out(torch.tanh(self.hidden(h)))


def test_shared_parameters_match_finite_differences_in_vmap_engine() -> None:
    from metaopt.testing import check_meta_gradient

    algo = metaopt.MAML(Tied().double(), inner_lr=0.1, inner_steps=2, engine="vmap")
    check_meta_gradient(algo, RegressionBatch(2, torch.float64, points=4), rtol=1e-6, atol=1e-9)


def test_batchnorm_model_falls_back_to_loop_or_refuses_vmap() -> None:
    model = nn.Sequential(nn.Linear(3, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 1)).double()
    tasks = RegressionBatch(3, torch.float64)
    metaopt.MAML(model, inner_lr=0.1).meta_backward(tasks)  # auto: the loop engine
    with pytest.raises(
        TypeError, match="engine='vmap' cannot run this meta-batch: the model has buffers"
    ):
        metaopt.MAML(model, inner_lr=0.1, engine="vmap").meta_backward(tasks)
    with pytest.raises(TypeError, match="do not implement BatchedTasks"):
        metaopt.MAML(mlp(torch.float64), inner_lr=0.1, engine="vmap").meta_backward(list(tasks))


def test_bad_batched_losses_are_named() -> None:
    class WrongShape(RegressionBatch):
        def query_losses(self, forward):
            return super().query_losses(forward).sum()

    with pytest.raises(
        ValueError, match=r"query_losses returned a tensor of shape \(\); expected \(3,\)"
    ):
        metaopt.MAML(mlp(torch.float64), inner_lr=0.1).meta_backward(WrongShape(3, torch.float64))


def test_unknown_engine() -> None:
    with pytest.raises(ValueError, match="engine must be one of auto, loop, vmap; got 'jit'"):
        metaopt.MAML(mlp(torch.float64), inner_lr=0.1, engine="jit")
