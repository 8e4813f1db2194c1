"""The batched (vmapped) evaluation adaptation against algo.adapt and against plain NumPy."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from supervised_helpers import omniglot_dir_fixture  # noqa: F401 - fixtures

import metaopt
from metaopt.nn import mlp
from supervised.adaptation import adaptation_curve, batched_curve, loop_curve, sgd_curve
from supervised.batch import TaskBatch
from supervised.models import conv4, seeded
from supervised.omniglot.data import load_omniglot, sample_episodes
from supervised.sine.tasks import sample_sine

STEPS = [0, 1, 3, 7]


def _double(batch: TaskBatch) -> TaskBatch:
    return TaskBatch(
        batch.support_x.double(),
        batch.support_y.double(),
        batch.query_x.double(),
        batch.query_y.double(),
        batch.loss,
    )


def _learner(name: str, model: torch.nn.Module) -> metaopt.MetaLearner:
    if name == "maml":
        return metaopt.MAML(model, inner_lr=0.02)
    if name == "fomaml":
        return metaopt.MAML(model, inner_lr=0.02, first_order=True)
    if name == "reptile":
        return metaopt.Reptile(model, inner_lr=0.02)
    algo = metaopt.MetaSGD(model, inner_lr=0.02)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():  # distinct rates per entry, so a mix-up of parameters would show
        for rate in algo.inner_lrs:
            rate.copy_(torch.rand(rate.shape, generator=gen, dtype=rate.dtype) * 0.04)
    return algo


@pytest.mark.parametrize("name", ["maml", "fomaml", "metasgd", "reptile"])
def test_batched_adaptation_equals_algo_adapt(name: str) -> None:
    batch = _double(sample_sine(np.random.default_rng(0), 6, shots=10, query=20))
    model = seeded(lambda: mlp(1, [16, 16], 1), 0).double()
    algo = _learner(name, model)
    assert algo.inner_sgd_rates() is not None  # the batched path is the one under test
    batched = adaptation_curve(algo, batch, STEPS)
    looped = loop_curve(algo, batch, STEPS)
    assert batched.shape == (len(STEPS), 6)
    torch.testing.assert_close(batched, looped, rtol=1e-10, atol=1e-12)
    assert not torch.equal(batched[0], batched[-1])  # adaptation did something


@pytest.mark.parametrize("momentum", [False, True])
def test_imaml_solve_batched_equals_algo_adapt(momentum: bool) -> None:
    # iMAML's inner solve stops each task at the tolerance: adapt() one task at a time, and the
    # batched path by stopping each task on its own. At 1e-6 on this tanh MLP the tasks stop at
    # different steps before 40, so a batch that stopped all together would differ.
    batch = _double(sample_sine(np.random.default_rng(0), 6, shots=10, query=20))
    model = seeded(lambda: mlp(1, [16, 16], 1, activation="tanh"), 0).double()
    algo = metaopt.IMAML(
        model, inner_lr=1.0, reg=10.0, inner_tol=1e-6, power_iterations=3, inner_momentum=momentum
    )
    assert algo.inner_sgd_rates() is None and algo.rule.solves_inner
    steps = [0, 1, 5, 40]
    batched = adaptation_curve(algo, batch, steps)
    looped = loop_curve(algo, batch, steps)
    torch.testing.assert_close(batched, looped, rtol=1e-10, atol=1e-12)
    assert not torch.equal(batched[0], batched[-1])
    residuals = algo.inner_residuals(batch, 40)  # [41, B]: the step each task is solved at
    solved_at = (residuals <= 1e-6).to(torch.int8).argmax(dim=0)
    assert bool((residuals[-1] <= 1e-6).all()) and len(set(solved_at.tolist())) > 1, solved_at


def test_batched_adaptation_of_the_conv_net_equals_algo_adapt(omniglot_dir: Path) -> None:
    data = load_omniglot(omniglot_dir, 28)
    batch = sample_episodes(
        np.random.default_rng(0),
        data,
        np.arange(data.num_characters),
        4,
        ways=3,
        shots=2,
        query_shots=2,
    )
    model = seeded(lambda: conv4(3, filters=8), 0)
    algo = metaopt.MAML(model, inner_lr=0.2)
    steps = [0, 1, 4]
    batched = sgd_curve(model, batch, steps, 0.2, chunk=3)
    looped = loop_curve(algo, batch, steps)
    torch.testing.assert_close(batched, looped)
    # Query loss, a continuous check: accuracy alone could agree by luck.
    task = batch[1]
    with algo.adapt(task, steps=4) as adapted, torch.no_grad():
        expected = task.query_loss(adapted)
    *_, forward = algo.adapt_batch_path(batch, 4)
    with torch.no_grad():
        logits = forward(batch.query_x)
    got = torch.nn.functional.cross_entropy(logits[1], batch.query_y[1])
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_sgd_on_a_linear_model_matches_numpy() -> None:
    batch = _double(sample_sine(np.random.default_rng(1), 5, shots=8, query=12))
    model = seeded(lambda: mlp(1, [], 1), 0).double()
    algo = metaopt.MetaSGD(model, inner_lr=0.03)
    with torch.no_grad():  # Meta-SGD's rates: 0.03 for the weight, 0.07 for the bias
        algo.inner_lrs[1].fill_(0.07)
    curve = batched_curve(algo, batch, STEPS)

    w0, b0 = model[0].weight.item(), model[0].bias.item()
    expected = np.empty((len(STEPS), 5))
    for t in range(5):
        x, y = batch.support_x[t, :, 0].numpy(), batch.support_y[t, :, 0].numpy()
        qx, qy = batch.query_x[t, :, 0].numpy(), batch.query_y[t, :, 0].numpy()
        w, b = w0, b0
        for step in range(max(STEPS) + 1):
            if step in STEPS:
                expected[STEPS.index(step), t] = np.mean((w * qx + b - qy) ** 2)
            residual = w * x + b - y  # d/dw mean(r²) = 2·mean(r·x), d/db = 2·mean(r)
            w, b = w - 0.03 * 2 * np.mean(residual * x), b - 0.07 * 2 * np.mean(residual)
    np.testing.assert_allclose(curve.numpy(), expected, rtol=1e-10)


def test_chunking_does_not_change_the_numbers() -> None:
    batch = sample_sine(np.random.default_rng(2), 10, shots=5, query=5)
    model = seeded(lambda: mlp(1, [8], 1), 0)
    whole = sgd_curve(model, batch, STEPS, 0.01)
    torch.testing.assert_close(sgd_curve(model, batch, STEPS, 0.01, chunk=3), whole)


def test_adam_inner_loops_fall_back_to_algo_adapt() -> None:
    model = seeded(lambda: mlp(1, [8], 1), 0)
    algo = metaopt.MAML(model, inner_lr=0.01, inner_optimizer="adam")
    assert algo.inner_sgd_rates() is None
    batch = sample_sine(np.random.default_rng(3), 2, shots=5, query=5)
    curve = adaptation_curve(algo, batch, [0, 2])
    task = batch[1]
    with algo.adapt(task, steps=2) as adapted:
        assert curve[1, 1].item() == pytest.approx(task.query_metric(adapted))


def test_evaluation_leaves_the_model_untouched() -> None:
    model = seeded(lambda: mlp(1, [8], 1), 0)
    before = [p.detach().clone() for p in model.parameters()]
    batch = sample_sine(np.random.default_rng(4), 3, shots=5, query=5)
    sgd_curve(model, batch, [0, 5], 0.1)
    loop_curve(metaopt.MAML(model, inner_lr=0.1), batch, [0, 5])
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before, strict=True))
