"""Linear-boundary classification tasks: labels, ranges, reproducibility, models, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from metaopt.training.config import resolve_config
from metaopt.training.family import ConfigError
from supervised.classify.family import ClassifyFamily
from supervised.classify.tasks import ClassifyConfig


def _config(**overrides: object) -> ClassifyConfig:
    config = resolve_config(ClassifyFamily(), overrides)
    assert isinstance(config, ClassifyConfig)
    return config


@pytest.mark.parametrize("dim", [1, 2, 5])
def test_labels_are_the_side_of_the_boundary(dim: int) -> None:
    config = _config(dim=dim, shots=8, query=30, offset=0.5)
    batch = ClassifyFamily().sample_tasks(config, np.random.default_rng(dim), 6)
    assert batch.support_x.shape == (6, 8, dim) and batch.support_y.shape == (6, 8, 1)
    assert batch.query_x.shape == (6, 30, dim) and batch.query_y.shape == (6, 30, 1)
    w = batch.info["normal"].double().numpy()
    b = batch.info["offset"].double().numpy()
    np.testing.assert_allclose(np.linalg.norm(w, axis=1), 1.0, rtol=1e-6)
    assert np.all(np.abs(b) <= 0.5)
    for x, y in ((batch.support_x, batch.support_y), (batch.query_x, batch.query_y)):
        side = np.einsum("bkd,bd->bk", x.double().numpy(), w) + b[:, None] > 0
        assert np.array_equal(side, y.numpy()[..., 0] == 1.0)


def test_reproducible_from_the_generator() -> None:
    family, config = ClassifyFamily(), _config()
    a = family.sample_tasks(config, np.random.default_rng(4), 3)
    b = family.sample_tasks(config, np.random.default_rng(4), 3)
    c = family.sample_tasks(config, np.random.default_rng(5), 3)
    assert torch.equal(a.query_x, b.query_x) and torch.equal(a.support_y, b.support_y)
    assert not torch.equal(a.query_x, c.query_x)


def test_boundary_directions_are_uniform_on_the_circle() -> None:
    batch = ClassifyFamily().sample_tasks(_config(dim=2), np.random.default_rng(0), 4000)
    angles = np.arctan2(*batch.info["normal"].numpy().T[::-1])
    counts, _ = np.histogram(angles, bins=8, range=(-np.pi, np.pi))
    assert counts.min() > 400 and counts.max() < 600  # 500 expected per bin


def test_model_choice() -> None:
    family = ClassifyFamily()
    logistic = family.make_model(_config(model="logistic", dim=3))
    assert [tuple(p.shape) for p in logistic.parameters()] == [(1, 3), (1,)]
    mlp = family.make_model(_config(model="mlp", dim=3, hidden=16, depth=1))
    assert [tuple(p.shape) for p in mlp.parameters()] == [(16, 3), (16,), (1, 16), (1,)]


def test_model_initialisation_depends_on_the_seed_only() -> None:
    family = ClassifyFamily()
    torch.manual_seed(123)
    a = family.make_model(_config(seed=3))
    torch.manual_seed(456)
    b = family.make_model(_config(seed=3))
    c = family.make_model(_config(seed=4))
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))
    assert not torch.equal(next(a.parameters()), next(c.parameters()))


@pytest.mark.parametrize(
    ("overrides", "words"),
    [
        ({"model": "svm"}, ["--model", "mlp, logistic", "svm"]),
        ({"dim": 0}, ["--dim", ">= 1", "0"]),
        ({"offset": -1.0}, ["--offset", ">= 0", "-1.0"]),
        ({"query": -3}, ["--query", "-3"]),
    ],
)
def test_bad_values(overrides, words) -> None:
    with pytest.raises(ConfigError) as caught:
        _config(**overrides)
    for word in words:
        assert word in str(caught.value)
