"""Sine tasks: reproducible from the generator, within the stated ranges, with the right shapes."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from metaopt.training.config import resolve_config
from metaopt.training.family import ConfigError
from supervised.sine.family import SineFamily
from supervised.sine.tasks import SineConfig, sample_sine


def _config(**overrides: object) -> SineConfig:
    config = resolve_config(SineFamily(), overrides)
    assert isinstance(config, SineConfig)
    return config


def test_same_seed_same_tasks_other_seed_other_tasks() -> None:
    family, config = SineFamily(), _config()
    a = family.sample_tasks(config, np.random.default_rng(7), 5)
    b = family.sample_tasks(config, np.random.default_rng(7), 5)
    c = family.sample_tasks(config, np.random.default_rng(8), 5)
    for name in ("support_x", "support_y", "query_x", "query_y"):
        assert torch.equal(getattr(a, name), getattr(b, name))
        assert not torch.equal(getattr(a, name), getattr(c, name))


def test_sampling_ignores_global_rng() -> None:
    family, config = SineFamily(), _config()
    torch.manual_seed(1)
    np.random.seed(1)  # noqa: NPY002 - on purpose: the global state must not matter
    a = family.sample_tasks(config, np.random.default_rng(3), 4)
    torch.manual_seed(2)
    np.random.seed(2)  # noqa: NPY002
    b = family.sample_tasks(config, np.random.default_rng(3), 4)
    assert torch.equal(a.support_y, b.support_y)


def test_maml_preset_is_the_default_and_matches_the_paper() -> None:
    config = _config()
    assert config.preset == "maml"
    assert (config.amp_min, config.amp_max) == (0.1, 5.0)
    assert (config.phase_min, config.phase_max) == (0.0, pytest.approx(math.pi))
    assert (config.x_min, config.x_max, config.grid) == (-5.0, 5.0, 0)
    assert (config.hidden, config.depth, config.activation) == (40, 2, "relu")
    assert (config.inner_lr, config.meta_batch, config.outer_lr) == (0.01, 25, 1e-3)
    assert config.outer_optimizer == "adam"
    model = SineFamily().make_model(config)
    assert [tuple(p.shape) for p in model.parameters()] == [
        (40, 1),
        (40,),
        (40, 40),
        (40,),
        (1, 40),
        (1,),
    ]
    assert isinstance(model[1], torch.nn.ReLU)


def test_reptile_preset_matches_the_seed() -> None:
    config = _config(preset="reptile")
    assert config.phase_max == pytest.approx(2 * math.pi)
    assert (config.grid, config.shots, config.minibatch, config.inner_steps) == (50, 50, 10, 5)
    assert (config.hidden, config.activation, config.inner_lr) == (64, "tanh", 0.02)
    assert (config.algo, config.outer_optimizer, config.outer_lr, config.anneal) == (
        "reptile",
        "sgd",
        0.1,
        True,
    )
    assert config.meta_batch == 1
    assert isinstance(SineFamily().make_model(config)[1], torch.nn.Tanh)


def test_shapes_and_targets() -> None:
    batch = SineFamily().sample_tasks(_config(shots=5, query=7), np.random.default_rng(0), 3)
    assert batch.support_x.shape == (3, 5, 1) and batch.support_y.shape == (3, 5, 1)
    assert batch.query_x.shape == (3, 7, 1) and batch.query_y.shape == (3, 7, 1)
    assert batch.support_x.dtype == torch.float32
    amp = batch.info["amplitude"].double().numpy()[:, None]
    phase = batch.info["phase"].double().numpy()[:, None]
    x = batch.query_x.double().numpy()[..., 0]
    np.testing.assert_allclose(
        batch.query_y.numpy()[..., 0], amp * np.sin(x + phase), rtol=1e-5, atol=1e-5
    )


@settings(max_examples=25, deadline=None)
@example(amp=[0.0, 0.0], phase=[0.0, -0.0], x=[0.0, 1.0], seed=0)  # −0.0 as an upper bound
@given(
    amp=st.tuples(st.floats(0, 3), st.floats(0, 3)).map(sorted),
    phase=st.tuples(st.floats(-4, 4), st.floats(-4, 4)).map(sorted),
    x=st.tuples(st.floats(-10, 10), st.floats(-10, 10))
    .map(sorted)
    .filter(lambda r: r[1] > r[0] + 1e-3),
    seed=st.integers(0, 2**32 - 1),
)
def test_draws_stay_in_their_ranges(amp, phase, x, seed) -> None:
    batch = sample_sine(
        np.random.default_rng(seed),
        20,
        shots=4,
        query=6,
        amplitude=tuple(amp),
        phase=tuple(phase),
        x_range=tuple(x),
    )
    eps = 1e-5
    assert float(batch.info["amplitude"].min()) >= amp[0] - eps
    assert float(batch.info["amplitude"].max()) <= amp[1] + eps
    assert float(batch.info["phase"].min()) >= phase[0] - eps
    assert float(batch.info["phase"].max()) <= phase[1] + eps
    for tensor in (batch.support_x, batch.query_x):
        assert float(tensor.min()) >= x[0] - eps and float(tensor.max()) <= x[1] + eps


def test_distribution_covers_the_ranges() -> None:
    batch = sample_sine(np.random.default_rng(0), 4000, shots=2, query=1)
    amp, phase = batch.info["amplitude"].numpy(), batch.info["phase"].numpy()
    # Uniform on [0.1, 5] and [0, π]: means and quartiles within sampling error.
    assert amp.mean() == pytest.approx(2.55, abs=0.1)
    assert phase.mean() == pytest.approx(math.pi / 2, abs=0.06)
    assert np.quantile(amp, 0.25) == pytest.approx(0.1 + 4.9 / 4, abs=0.15)


def test_grid_tasks_use_distinct_grid_points_and_score_on_the_grid() -> None:
    config = _config(preset="reptile")
    family = SineFamily()
    batch = family.sample_tasks(config, np.random.default_rng(0), 4)
    grid = torch.linspace(-5, 5, 50)
    assert batch.support_x.shape == (4, 50, 1) and batch.minibatch == 10
    for task in batch:
        xs = task.support_x.flatten()
        assert torch.allclose(xs.sort().values, grid, atol=1e-6)  # the whole grid, shuffled
        assert torch.allclose(task.query_x.flatten(), grid, atol=1e-6)
    held_out = family.sample_batch(config, np.random.default_rng(0), 4, split="test")
    assert held_out.support_x.shape == (4, 10, 1) and held_out.minibatch is None
    for task in held_out:
        xs = task.support_x.flatten()
        assert len(set(xs.tolist())) == 10
        assert all(torch.isclose(grid, v, atol=1e-6).any() for v in xs)


def test_reptile_inner_steps_walk_one_epoch_of_minibatches() -> None:
    config = _config(preset="reptile")
    task = SineFamily().sample_tasks(config, np.random.default_rng(0), 1)[0]
    seen = []

    def model(x: torch.Tensor) -> torch.Tensor:
        seen.append(x.clone())
        return x

    for _ in range(config.inner_steps):
        task.support_loss(model)  # type: ignore[arg-type]
    assert [len(x) for x in seen] == [10] * 5
    assert torch.equal(
        torch.cat(seen).flatten().sort().values, task.support_x.flatten().sort().values
    )


@pytest.mark.parametrize(
    ("overrides", "words"),
    [
        ({"preset": "reptile", "shots": 60}, ["--shots", "60", "50"]),
        ({"preset": "reptile", "eval_shots": 51}, ["--eval-shots", "51", "50"]),
        ({"shots": 0}, ["--shots", "0", ">= 1"]),
        ({"amp_min": -1.0}, ["--amp-min", "-1.0", ">= 0"]),
        ({"amp_min": 2.0, "amp_max": 1.0}, ["--amp-max", "1.0", ">= 2"]),
        ({"x_min": 3.0, "x_max": 3.0}, ["--x-max", "3.0"]),
        ({"grid": 1}, ["--grid", "1"]),
        ({"activation": "gelu"}, ["--activation", "relu, tanh"]),
        ({"baseline_steps": -5}, ["--baseline-steps", "-5"]),
        ({"protocol_points": 80}, ["--protocol-points", "80", "50"]),
    ],
)
def test_bad_values_name_the_flag_the_value_and_what_is_allowed(overrides, words) -> None:
    with pytest.raises(ConfigError) as caught:
        _config(**overrides)
    message = str(caught.value)
    for word in words:
        assert word in message, message
