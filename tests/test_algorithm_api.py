"""What code outside the algorithms reads of them: one public API instead of type checks."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import metaopt


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(2, 4), nn.Tanh(), nn.Linear(4, 1)).double()


def _algorithms() -> dict[str, metaopt.MetaLearner]:
    return {
        "maml": metaopt.MAML(_model(), inner_lr=0.1),
        "maml-adam": metaopt.MAML(_model(), inner_lr=0.1, inner_optimizer="adam"),
        "metasgd": metaopt.MetaSGD(_model(), inner_lr=0.1),
        "reptile": metaopt.Reptile(_model(), inner_lr=0.1),
    }


@pytest.mark.parametrize("name", list(_algorithms()))
def test_learned_state_round_trips(name: str) -> None:
    algo = _algorithms()[name]
    with torch.no_grad():
        for rate in algo.rate_parameters():
            rate.uniform_(0.0, 1.0)
    saved = algo.learned_state()
    other = _algorithms()[name]
    other.load_learned_state(saved)
    for a, b in zip(algo.rate_parameters(), other.rate_parameters(), strict=True):
        assert torch.equal(a, b)
    assert (name == "metasgd") == bool(algo.rate_parameters())
    assert (name == "metasgd") == ("inner_lrs" in saved)


def test_rates_and_description() -> None:
    algos = _algorithms()
    assert algos["maml"].inner_sgd_rates() == 0.1
    assert algos["maml-adam"].inner_sgd_rates() is None
    rates = algos["metasgd"].inner_sgd_rates()
    assert isinstance(rates, list) and len(rates) == 4
    assert all(torch.equal(r, torch.full_like(r, 0.1)) for r in rates)
    assert algos["maml-adam"].describe() == {"rule": "adam", "lr": 0.1}
    described = algos["metasgd"].describe()
    assert described["rule"].startswith("meta-sgd") and described["rate_mean"] == pytest.approx(0.1)


@pytest.mark.parametrize("name", list(_algorithms()))
def test_the_untrained_baseline_adapts_by_the_same_rule(name: str) -> None:
    # An untrained algorithm and its baseline adapt a model to the same parameters (Meta-SGD's
    # untrained rates are inner_lr, the baseline's plain SGD step).
    algo = _algorithms()[name]
    baseline = algo.untrained_baseline(_model())

    class Task:
        x = torch.linspace(-1, 1, 8, dtype=torch.float64).reshape(4, 2)

        def support_loss(self, model):
            return model(self.x).pow(2).mean()

        def query_loss(self, model):  # pragma: no cover - not used
            raise NotImplementedError

    adapted = []
    for learner in (algo, baseline):
        with learner.adapt(Task(), steps=2) as model:
            adapted.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    torch.testing.assert_close(adapted[0], adapted[1], rtol=1e-12, atol=1e-15)


def test_names_and_exactness() -> None:
    model = _model()
    cases = [
        (metaopt.MAML(model), "maml", True),
        (metaopt.MAML(model, first_order=True), "fomaml", False),
        (metaopt.MetaSGD(_model()), "metasgd", True),
        (metaopt.MetaSGD(_model(), first_order=True), "metasgd", False),
        (metaopt.Reptile(model), "reptile", False),
        (metaopt.IMAML(model), "imaml", False),
    ]
    for algo, name, exact in cases:
        assert algo.name == name and name in metaopt.algorithms.ALGORITHMS
        assert algo.exact_meta_gradient is exact
