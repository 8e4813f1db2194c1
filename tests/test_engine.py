"""The vectorised engine gives the loop engine's meta-gradients, for every algorithm."""

from __future__ import annotations

import pytest
import torch
from core_helpers import StackedTasks
from torch import nn

import metaopt


class RegressionBatch(StackedTasks):
    """Tasks y = sin(x·w) with stacked data; usable by both engines."""

    def __init__(self, num_tasks: int, dtype: torch.dtype, seed: int = 0, points: int = 8) -> None:
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(num_tasks, 2, points, 3, generator=g, dtype=dtype)
        w = torch.randn(num_tasks, 1, 3, 1, generator=g, dtype=dtype)
        y = torch.sin(x @ w)
        self.stack(x[:, 0], y[:, 0], x[:, 1], y[:, 1])


def mlp(dtype: torch.dtype, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(3, 16), nn.Tanh(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 1)
    ).to(dtype)


def build(name: str, model: nn.Module, engine: str, steps: int) -> metaopt.MetaLearner:
    adapt = ["4"] if name.endswith("-anil") else None  # ANIL: the last layer adapts
    name = name.removesuffix("-anil")
    if name == "metasgd":
        algo = metaopt.MetaSGD(model, inner_lr=0.05, inner_steps=steps, engine=engine, adapt=adapt)
        with torch.no_grad():  # non-uniform rates, the same for both engines
            for i, rate in enumerate(algo.inner_lrs):
                rate.mul_(
                    1.0
                    + 0.1 * torch.arange(rate.numel(), dtype=rate.dtype).reshape(rate.shape).sin()
                    + i
                )
        return algo
    if name == "reptile":
        return metaopt.Reptile(model, inner_lr=0.05, inner_steps=steps, engine=engine, adapt=adapt)
    optimizer = "adam" if name.endswith("adam") else "sgd"
    first_order = name.startswith("fomaml")
    return metaopt.MAML(
        model,
        inner_lr=0.05,
        inner_steps=steps,
        first_order=first_order,
        inner_optimizer=optimizer,
        engine=engine,
        adapt=adapt,
    )


def meta_gradient(algo: metaopt.MetaLearner, tasks) -> tuple[torch.Tensor, metaopt.MetaMetrics]:
    metrics = algo.meta_backward(tasks)
    return torch.cat([p.grad.reshape(-1) for p in algo.meta_parameters()]), metrics


NAMES = ["maml", "fomaml", "maml-adam", "fomaml-adam", "metasgd", "reptile"]
NAMES += ["maml-anil", "fomaml-anil", "metasgd-anil", "reptile-anil"]


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
    import metaopt.algorithms.learner as algorithms

    original = algorithms.inner_path
    monkeypatch.setattr(
        algorithms, "inner_path", lambda *a, **k: calls.append(1) or original(*a, **k)
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


@pytest.mark.parametrize("batch_norm", ["running", "batch"])
def test_batchnorm_in_training_mode_runs_vectorised_with_the_loop_engines_answer(
    batch_norm: str,
) -> None:
    # Running statistics get one copy per task, dropped afterwards (the loop engine restores
    # them); with batch_norm="batch" they are not touched at all.
    def model() -> nn.Module:
        torch.manual_seed(0)
        return nn.Sequential(
            nn.Linear(3, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 1)
        ).double()

    tasks = RegressionBatch(3, torch.float64)
    grads = {}
    for engine in ("loop", "auto"):
        net = model()
        net[1].running_mean.add_(0.5)  # a state the engines must leave as it is
        algo = metaopt.MAML(net, inner_lr=0.1, inner_steps=2, engine=engine, batch_norm=batch_norm)
        grads[engine], _ = meta_gradient(algo, tasks)
        assert algo.last_engine == ("loop" if engine == "loop" else "vmap")
        torch.testing.assert_close(net[1].running_mean, torch.full((8,), 0.5, dtype=torch.float64))
        assert int(net[1].num_batches_tracked) == 0
    # The bias before BatchNorm has a gradient of 0 in exact arithmetic: compare in norm.
    assert (grads["auto"] - grads["loop"]).norm() <= 1e-12 * grads["loop"].norm()


def test_vmap_refuses_tasks_that_are_not_batched() -> None:
    tasks = RegressionBatch(3, torch.float64)
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
    with pytest.raises(
        ValueError, match="engine must be one of auto, vmap, loop, compiled; got 'jit'"
    ):
        metaopt.MAML(mlp(torch.float64), inner_lr=0.1, engine="jit")


def test_a_support_loss_without_grad_is_named_by_the_vectorised_engine() -> None:
    class Detached(RegressionBatch):
        def support_losses(self, forward, step):
            return super().support_losses(forward, step).detach()

    model = mlp(torch.float64)
    with pytest.raises(ValueError, match="support_losses of the meta-batch .* does not depend"):
        metaopt.MAML(model, inner_lr=0.1, engine="vmap").meta_backward(Detached(3, torch.float64))
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("engine", ["loop", "vmap"])
def test_meta_backward_under_no_grad_names_the_cause(engine: str) -> None:
    tasks = RegressionBatch(2, torch.float64)
    algo = metaopt.MAML(mlp(torch.float64), inner_lr=0.1, engine=engine)
    with torch.no_grad(), pytest.raises(RuntimeError, match=r"inside torch.no_grad\(\)"):
        algo.meta_backward(tasks if engine == "vmap" else list(tasks))


class CellNet(nn.Module):
    """A user's module calling a kernel that torch.func has no batching rule for, which no
    up-front check can know about."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.w_ih = nn.Parameter(torch.randn(16, 3) / 3)
        self.w_hh = nn.Parameter(torch.randn(16, 4) / 3)
        self.head = nn.Linear(4, 1)

    def forward(self, x):
        zeros = x.new_zeros(x.shape[0], 4)
        h, _ = torch.lstm_cell(x, (zeros, zeros), self.w_ih, self.w_hh)
        return self.head(h)


def test_auto_falls_back_when_vmap_meets_an_operation_it_cannot_batch() -> None:
    tasks = RegressionBatch(3, torch.float64)
    loop_model = CellNet().double()
    loop = metaopt.MAML(loop_model, inner_lr=0.1, engine="loop")
    want, _ = meta_gradient(loop, list(tasks))

    model = CellNet().double()
    for p in model.parameters():  # a gradient accumulated earlier must survive the failed try
        p.grad = torch.ones_like(p)
    algo = metaopt.MAML(model, inner_lr=0.1)
    with pytest.warns(UserWarning, match="runs this model on the loop engine from now on"):
        algo.meta_backward(tasks)
    assert algo.last_engine == "loop"
    got = torch.cat([(p.grad - 1).reshape(-1) for p in model.parameters()])
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-15)
    algo.meta_backward(tasks)  # remembered: straight to the loop engine
    assert algo.last_engine == "loop"

    strict = metaopt.MAML(CellNet().double(), inner_lr=0.1, engine="vmap")
    with pytest.raises(TypeError, match="engine='vmap' cannot run this model: Batching rule"):
        strict.meta_backward(tasks)
    assert all(p.grad is None for p in strict.model.parameters())


def test_a_failed_loop_meta_backward_leaves_no_partial_gradient() -> None:
    class Failing(list):
        pass

    tasks = Failing(RegressionBatch(3, torch.float64))
    tasks[2].query_loss = lambda model: torch.ones(2, requires_grad=True)  # not a scalar
    model = mlp(torch.float64)
    with pytest.raises(ValueError, match="query_loss of task 2 returned a tensor of shape"):
        metaopt.MAML(model, inner_lr=0.1, engine="loop").meta_backward(tasks)
    assert all(p.grad is None for p in model.parameters())


def test_last_engine_is_exposed() -> None:
    tasks = RegressionBatch(2, torch.float64)
    algo = metaopt.Reptile(mlp(torch.float64), inner_lr=0.1, inner_steps=1)
    assert algo.last_engine is None
    algo.meta_backward(tasks)
    assert algo.last_engine == "vmap"
    algo.meta_backward(list(tasks))
    assert algo.last_engine == "loop"


def test_unknown_batch_norm_mode() -> None:
    with pytest.raises(ValueError, match="batch_norm must be one of running, batch; got 'per'"):
        metaopt.MAML(mlp(torch.float64), inner_lr=0.1, batch_norm="per")
