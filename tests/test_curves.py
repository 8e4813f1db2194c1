"""metaopt.evaluate: adaptation curves with 95% intervals against a plain reference loop."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from core_helpers import TanhMLP
from test_core_gradients import RegressionTask
from torch import nn

import metaopt
from metaopt import testing as mt

STEPS = (0, 1, 3)


def _reference(model: nn.Module, tasks, rates, steps) -> np.ndarray:
    """Plain SGD by hand on a copy of the model: θ ← θ − α ∘ ∇L^s(θ), query loss after k steps."""
    out = np.empty((len(steps), len(tasks)))
    for j, task in enumerate(tasks):
        for i, k in enumerate(steps):
            net = copy.deepcopy(model)
            params = list(net.parameters())
            for _ in range(k):
                grads = torch.autograd.grad(task.support_loss(net), params)
                with torch.no_grad():
                    for p, g, a in zip(params, grads, rates, strict=True):
                        p -= a * g
            with torch.no_grad():
                out[i, j] = task.query_loss(net).item()
    return out


def _summary(values: np.ndarray) -> tuple[float, float]:
    return values.mean(), 1.959963984540054 * values.std(ddof=1) / np.sqrt(values.size)


@pytest.mark.parametrize("algo_name", ["maml", "metasgd"])
def test_plain_tasks_match_a_reference_loop(algo_name: str) -> None:
    model = TanhMLP()
    tasks = [RegressionTask(s) for s in range(6)]
    if algo_name == "maml":
        algo = metaopt.MAML(model, inner_lr=0.2)
        rates = [0.2] * 4
    else:
        algo = metaopt.MetaSGD(model, inner_lr=0.2)
        with torch.no_grad():
            for i, rate in enumerate(algo.inner_lrs):
                rate.mul_(0.5 + 0.25 * i)
        rates = [r.detach().clone() for r in algo.inner_lrs]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    curves = metaopt.evaluate(algo, tasks, STEPS)
    reference = _reference(model, tasks, rates, STEPS)
    assert curves.engine == "loop" and curves.steps == STEPS
    np.testing.assert_allclose(curves.losses.numpy(), reference, rtol=1e-12, atol=1e-14)
    for i, k in enumerate(STEPS):
        mean, half = _summary(reference[i])
        assert curves.by_steps[str(k)]["mean"] == pytest.approx(mean, rel=1e-12)
        assert curves.by_steps[str(k)]["ci95"] == pytest.approx(half, rel=1e-9)
        diff_mean, diff_half = _summary(reference[i] - reference[0])  # paired
        assert curves.after_minus_before[str(k)]["mean"] == pytest.approx(diff_mean, abs=1e-12)
        assert curves.after_minus_before[str(k)]["ci95"] == pytest.approx(diff_half, abs=1e-12)
    for key, value in model.state_dict().items():  # the model is left as it was
        assert torch.equal(value, before[key])


@pytest.mark.parametrize("algo_name", ["maml", "metasgd", "reptile"])
def test_batched_tasks_take_the_vectorised_engine_and_agree_with_the_loop(algo_name) -> None:
    rng = np.random.default_rng(0)
    theta = rng.normal(size=7)
    batch = mt.random_linear_tasks(40, 7, rng)
    assert isinstance(batch, metaopt.BatchedTasks)
    cls = {"maml": metaopt.MAML, "metasgd": metaopt.MetaSGD, "reptile": metaopt.Reptile}
    algo = cls[algo_name](mt.LinearModel(theta, split=3), inner_lr=0.05)
    fast = metaopt.evaluate(algo, batch, (0, 1, 5, 10))
    slow = metaopt.evaluate(algo, list(batch), (0, 1, 5, 10))
    assert (fast.engine, slow.engine) == ("vmap", "loop")
    torch.testing.assert_close(fast.losses, slow.losses, rtol=1e-12, atol=1e-13)
    reference = _reference(algo.model, list(batch), [0.05, 0.05], (0, 1, 5, 10))
    np.testing.assert_allclose(fast.losses.numpy(), reference, rtol=1e-10)
    assert metaopt.evaluate(algo, batch, (0, 5), engine="loop").engine == "loop"


def test_diverged_tasks_are_counted_not_averaged() -> None:
    algo = metaopt.MAML(TanhMLP(), inner_lr=0.2)
    tasks = [RegressionTask(s) for s in range(4)]
    with torch.no_grad():
        tasks[2].ys = tasks[2].ys * float("nan")  # one task's adaptation turns NaN
    summary = metaopt.evaluate(algo, tasks, (0, 2)).by_steps["2"]
    assert summary["diverged"] == 1 and summary["finite"]["tasks"] == 3
    assert "diverged" in str(metaopt.evaluate(algo, tasks, (2,)))


def test_bad_arguments_are_refused_with_the_reason() -> None:
    algo = metaopt.MAML(TanhMLP(), inner_lr=0.2)
    tasks = [RegressionTask(0)]
    with pytest.raises(TypeError, match="not a BatchedTasks"):
        metaopt.evaluate(algo, tasks, engine="vmap")
    with pytest.raises(ValueError, match="engine"):
        metaopt.evaluate(algo, tasks, engine="fast")
    with pytest.raises(ValueError, match="steps"):
        metaopt.evaluate(algo, tasks, (0, -1))
    with pytest.raises(ValueError, match="at least one task"):
        metaopt.evaluate(algo, [])
    with pytest.raises(TypeError, match="task 0"):
        metaopt.evaluate(algo, [object()])
