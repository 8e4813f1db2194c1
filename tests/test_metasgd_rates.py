"""Meta-SGD's rates: the positive parameterisation α = softplus(ρ) against the closed form, and the
warning when raw rates turn negative."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from core_helpers import TanhMLP
from test_core_gradients import RegressionTask

import metaopt
import metaopt.compiled as compiled
from metaopt import testing as mt


def _softplus(x: np.ndarray) -> np.ndarray:
    return np.log1p(np.exp(x))


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-x))


@pytest.fixture
def setup() -> tuple[np.ndarray, list[mt.LinearTask], np.ndarray]:
    rng = np.random.default_rng(0)
    theta = rng.normal(size=7)
    raw = rng.uniform(-3.0, 0.5, size=7)  # negative ρ too: softplus's curved part matters
    return theta, mt.random_linear_tasks(4, 7, rng), raw


def _positive(theta: np.ndarray, raw: np.ndarray, steps: int, engine: str) -> metaopt.MetaSGD:
    model = mt.LinearModel(theta, split=3)
    algo = metaopt.MetaSGD(
        model, inner_lr=0.1, inner_steps=steps, engine=engine, positive_rates=True
    )
    with torch.no_grad():
        algo.inner_lrs[0].copy_(torch.as_tensor(raw[:3]))
        algo.inner_lrs[1].copy_(torch.as_tensor(raw[3:]))
    return algo


@pytest.mark.parametrize("engine", ["loop", "vmap"])
@pytest.mark.parametrize("steps", [1, 3])
@pytest.mark.parametrize("first_order", [False, True])
def test_positive_rates_meta_gradient_is_the_closed_form_times_sigmoid(
    setup, steps: int, engine: str, first_order: bool
) -> None:
    # dL/dρ = dL/dα · dα/dρ with α = log(1 + e^ρ), dα/dρ = 1 / (1 + e^-ρ), written out here in
    # NumPy from the closed form of Li et al.'s update at α.
    theta, tasks, raw = setup
    algo = _positive(theta, raw, steps, engine)
    algo.first_order = first_order
    tasks = mt.LinearTaskBatch(tasks) if engine == "vmap" else tasks
    algo.meta_backward(tasks)
    g_theta, g_alpha = mt.metasgd_meta_gradient(
        tasks, theta, _softplus(raw), steps, first_order=first_order
    )
    got_theta = torch.cat([p.grad.reshape(-1) for p in algo.model.parameters()]).numpy()
    got_raw = torch.cat([r.grad.reshape(-1) for r in algo.inner_lrs]).numpy()
    np.testing.assert_allclose(got_theta, g_theta, rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(got_raw, g_alpha * _sigmoid(raw), rtol=1e-10, atol=1e-13)
    # metaopt.testing knows the parameterisation too (it asks the learner's describe()).
    mt.check_meta_gradient(algo, tasks, method="closed_form", rtol=1e-10, atol=1e-13)


def test_positive_rates_on_the_compiled_engines_function(setup) -> None:
    # The compiled engine's functional meta-iteration, run eagerly (compiling is slow).
    theta, tasks, raw = setup
    algo = _positive(theta, raw, 2, "loop")
    function = compiled.functional_meta_gradient(
        algo.model, algo.rule, steps=2, inner_optimizer="sgd", inner_lr=0.1, learned=True
    )
    params = tuple(p.detach() for p in algo.model.parameters())
    rates = tuple(r.detach() for r in algo.inner_lrs)
    sums, *_ = function(params, rates, {}, mt.LinearTaskBatch(tasks))
    _, g_alpha = mt.metasgd_meta_gradient(tasks, theta, _softplus(raw), 2)
    got_raw = torch.cat([g.reshape(-1) for g in sums[2:]]).numpy() / len(tasks)
    np.testing.assert_allclose(got_raw, g_alpha * _sigmoid(raw), rtol=1e-10, atol=1e-13)


def test_positive_rates_finite_differences_on_a_tanh_mlp() -> None:
    algo = metaopt.MetaSGD(TanhMLP(), inner_lr=0.2, inner_steps=2, positive_rates=True)
    with torch.no_grad():
        for i, rate in enumerate(algo.inner_lrs):
            rate.add_(torch.linspace(-1.0, 1.0, rate.numel(), dtype=rate.dtype).view_as(rate) * i)
    mt.check_meta_gradient(algo, [RegressionTask(1), RegressionTask(2)], rtol=1e-6, atol=1e-9)


def test_positive_rates_start_at_inner_lr_and_stay_positive() -> None:
    algo = metaopt.MetaSGD(TanhMLP(), inner_lr=0.03, positive_rates=True)
    for alpha in algo.inner_sgd_rates():
        torch.testing.assert_close(alpha, torch.full_like(alpha, 0.03), rtol=1e-12, atol=0)
    with torch.no_grad():
        for rate in algo.inner_lrs:
            rate.fill_(-40.0)  # a raw rate far below 0 is still a (tiny) positive rate
    assert all(bool((a > 0).all()) for a in algo.inner_sgd_rates())
    assert algo.describe()["rate_min"] > 0
    assert algo.describe()["rates"] == "softplus (positive)"
    with pytest.raises(TypeError, match="positive_rates must be a bool"):
        metaopt.MetaSGD(TanhMLP(), positive_rates="yes")  # type: ignore[arg-type]


def test_positive_rates_with_anil_keep_the_body_still() -> None:
    algo = metaopt.MetaSGD(TanhMLP(), inner_lr=0.1, adapt=["net.2"], positive_rates=True)
    rates = algo.inner_sgd_rates()
    assert [float(r.abs().max()) for r in rates[:2]] == [0.0, 0.0]
    assert [r.requires_grad for r in algo.inner_lrs] == [False, False, True, True]


def test_a_raw_rate_that_turns_negative_warns_once_naming_it() -> None:
    algo = metaopt.MetaSGD(TanhMLP(), inner_lr=0.1)
    tasks = [RegressionTask(1)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        algo.meta_backward(tasks)  # all rates positive: silent
    with torch.no_grad():
        algo.inner_lrs[3][0] = -0.097  # net.2.bias
    with pytest.warns(UserWarning, match=r"rate of net\.2\.bias has turned negative.*-0\.097"):
        algo.meta_backward(tasks)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        algo.meta_backward(tasks)  # once
        positive = metaopt.MetaSGD(TanhMLP(), inner_lr=0.1, positive_rates=True)
        with torch.no_grad():
            positive.inner_lrs[3].fill_(-5.0)  # ρ < 0 is α > 0: nothing to say
        positive.meta_backward(tasks)


def test_adaptation_figure_marks_the_trained_steps_and_hides_diverged_curves(
    tmp_path, monkeypatch
) -> None:
    # Rates far too large for 8+ steps: the figure must say "diverged", not draw vertical lines
    # or title itself "nan", and must show the step count the model was meta-trained for.
    import supervised.plots as plots
    from metaopt.training.config import resolve_config
    from supervised.families import SineFamily

    family = SineFamily()
    config = resolve_config(family, {"algo": "metasgd", "inner_steps": 2})
    task = family.sample_batch(config, np.random.default_rng(0), 1, split="test")[0]
    algo = metaopt.MetaSGD(family.make_model(config), inner_lr=0.05, inner_steps=2)
    with torch.no_grad():
        algo.inner_lrs[-1].fill_(3.0)  # the output bias: |1 − 2·3| = 5 > 1, geometric blow-up
    figures = []
    monkeypatch.setattr(plots, "save_figure", lambda fig, path, **_: figures.append(fig))
    plots.plot_sine_adaptation(tmp_path / "a.png", algo, task, x_range=(-5, 5), title="t")
    (ax,) = figures[0].axes
    title, labels = ax.get_title(), ax.get_legend_handles_labels()[1]
    assert "nan" not in title and "after 2 steps" in title and "32 steps: diverged" in title
    assert "after 2 steps (meta-trained for)" in labels
    assert "after 32 steps: diverged, not drawn" in labels
    for line in ax.get_lines():
        y = np.asarray(line.get_ydata(), dtype=float)
        assert np.all(np.isfinite(y)) and (y.size == 0 or np.abs(y).max() < 100)


def test_positive_rates_with_checkpointed_unrolling_match_the_closed_form(setup) -> None:
    # The unroll recomputes the inner steps in the backward pass; softplus sits inside the update,
    # so ρ's gradient goes through it the same way.
    theta, tasks, raw = setup
    algo = metaopt.MetaSGD(
        mt.LinearModel(theta, split=3), 0.1, 3, engine="vmap", unroll_checkpoints=1,
        positive_rates=True,
    )  # fmt: skip
    with torch.no_grad():
        algo.inner_lrs[0].copy_(torch.as_tensor(raw[:3]))
        algo.inner_lrs[1].copy_(torch.as_tensor(raw[3:]))
    algo.meta_backward(mt.LinearTaskBatch(tasks))
    _, g_alpha = mt.metasgd_meta_gradient(tasks, theta, _softplus(raw), 3)
    got_raw = torch.cat([r.grad.reshape(-1) for r in algo.inner_lrs]).numpy()
    np.testing.assert_allclose(got_raw, g_alpha * _sigmoid(raw), rtol=1e-10, atol=1e-13)
