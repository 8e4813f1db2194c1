"""ANIL (``adapt=``): only some parameters adapt in the inner loop, every one is meta-learned.

Checked against the closed forms of :mod:`metaopt.testing` on least squares with a split
parameter vector (a block of θ has inner rate 0), finite differences on an MLP, the full
algorithm when every parameter adapts, and the loop engine's answer on the vectorised engine.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from core_helpers import TanhMLP

import metaopt
from metaopt import testing as mt
from metaopt.algorithms.subset import anil_heads, head_prefix
from rl.continuous import GaussianMLPPolicy
from rl.policy import CategoricalMLPPolicy

ALGOS = ["maml", "fomaml", "metasgd", "reptile"]


def build(name: str, model: torch.nn.Module, **kwargs) -> metaopt.MetaLearner:
    if name == "metasgd":
        algo = metaopt.MetaSGD(model, **kwargs)
        with torch.no_grad():  # non-uniform rates make the check sharper
            for i, rate in enumerate(algo.inner_lrs):
                wave = torch.arange(rate.numel(), dtype=rate.dtype).reshape(rate.shape).sin()
                rate.mul_(1.0 + 0.3 * wave + i)
        return algo
    if name == "reptile":
        return metaopt.Reptile(model, **kwargs)
    return metaopt.MAML(model, first_order=name == "fomaml", **kwargs)


@pytest.mark.parametrize("engine", ["loop", "vmap"])
@pytest.mark.parametrize("steps", [1, 3])
@pytest.mark.parametrize("block", ["weight", "bias"])
@pytest.mark.parametrize("name", ALGOS)
def test_closed_form_with_one_block_adapted(name: str, block: str, steps: int, engine: str) -> None:
    rng = np.random.default_rng(1)
    theta = rng.normal(size=7)
    tasks = mt.random_linear_tasks(4, 7, rng)
    algo = build(
        name, mt.LinearModel(theta, split=3), inner_lr=0.3, inner_steps=steps, engine=engine
    )
    algo_anil = build(
        name,
        mt.LinearModel(theta, split=3),
        inner_lr=0.3,
        inner_steps=steps,
        engine=engine,
        adapt=[block],
    )
    assert algo_anil.adapted == {block}
    mt.check_meta_gradient(algo_anil, tasks, method="closed_form", rtol=1e-10, atol=1e-13)
    # The check can fail: the full algorithm's gradient is not ANIL's.
    algo.meta_backward(tasks)
    algo_anil.meta_backward(tasks)
    full = torch.cat([p.grad for p in algo.model.parameters()])
    anil = torch.cat([p.grad for p in algo_anil.model.parameters()])
    assert (full - anil).norm() > 1e-3 * full.norm()


@pytest.mark.parametrize("kind", ["maml", "metasgd"])
def test_finite_differences_on_an_mlp_with_only_its_head_adapted(kind: str) -> None:
    from test_core_gradients import RegressionTask

    model = TanhMLP()
    algo = build(kind, model, inner_lr=0.2, inner_steps=2, adapt=["net.2"])
    assert algo.adapted == {"net.2.weight", "net.2.bias"}
    mt.check_meta_gradient(algo, [RegressionTask(1), RegressionTask(2)], rtol=1e-6, atol=1e-9)
    algo.meta_backward([RegressionTask(1)])
    assert model.net[0].weight.grad.abs().max() > 0  # the body is still meta-learned


@pytest.mark.parametrize("name", ALGOS)
def test_every_parameter_adapted_is_the_full_algorithm(name: str) -> None:
    from test_core_gradients import RegressionTask

    tasks = [RegressionTask(s) for s in range(3)]
    names = [n for n, _ in TanhMLP().named_parameters()]
    grads = []
    for adapt in (None, names, ["net"], lambda n, p: True):
        algo = build(name, TanhMLP(), inner_lr=0.2, inner_steps=2, adapt=adapt)
        assert algo.adapted is None
        algo.meta_backward(tasks)
        grads.append(torch.cat([p.grad.reshape(-1) for p in algo.meta_parameters()]))
    for grad in grads[1:]:
        assert torch.equal(grad, grads[0])


def test_the_body_keeps_theta_during_adaptation_and_reptile_leaves_it_alone() -> None:
    from test_core_gradients import RegressionTask

    model = TanhMLP()
    body = model.net[0].weight.detach().clone()
    head = model.net[2].weight.detach().clone()
    algo = metaopt.Reptile(model, inner_lr=0.2, inner_steps=3, adapt=lambda n, p: "net.2" in n)
    with algo.adapt(RegressionTask(1)) as adapted:
        assert torch.equal(adapted.net[0].weight, body)
        assert not torch.equal(adapted.net[2].weight, head)
    algo.meta_backward([RegressionTask(1)])
    assert torch.count_nonzero(model.net[0].weight.grad) == 0
    assert torch.count_nonzero(model.net[2].weight.grad) > 0


def test_metasgd_learns_rates_of_the_adapted_parameters_only() -> None:
    model = TanhMLP()
    algo = metaopt.MetaSGD(model, inner_lr=0.1, adapt=["net.2"])
    rates = [r for r in algo.inner_lrs if r.requires_grad]
    assert len(rates) == 2 and len(algo.meta_parameters()) == 4 + 2
    assert all(float(r.abs().max()) == 0 for r in algo.inner_lrs if not r.requires_grad)
    assert algo.describe()["rate_mean"] == pytest.approx(0.1)
    assert algo.describe()["adapt"] == ["net.2.bias", "net.2.weight"]


def test_head_prefix_is_the_last_layer_with_parameters() -> None:
    assert head_prefix(TanhMLP()) == "net.2"


@pytest.mark.parametrize(
    ("adapt", "error", "match"),
    [
        (["nope"], ValueError, "'nope' names no parameter or submodule"),
        (["net.2.weigh"], ValueError, "names no parameter"),
        ([], TypeError, "adapt must be"),
        ([3], TypeError, "adapt must be"),
        (lambda n, p: False, ValueError, "selects no trainable parameter"),
    ],
)
def test_bad_adapt_is_named(adapt, error, match: str) -> None:
    with pytest.raises(error, match=match):
        metaopt.MAML(TanhMLP(), adapt=adapt)


def test_a_frozen_selection_adapts_nothing_and_is_refused() -> None:
    model = TanhMLP()
    model.net[2].requires_grad_(False)
    with pytest.raises(ValueError, match="selects no trainable parameter"):
        metaopt.MAML(model, adapt=["net.2"])


def test_the_compiled_engine_refuses_a_subset() -> None:
    with pytest.raises(ValueError, match="engine='compiled' adapts every parameter"):
        metaopt.MAML(TanhMLP(), engine="compiled", adapt=["net.2"])
    metaopt.MAML(TanhMLP(), engine="compiled", adapt=["net"])  # everything: the full algorithm


@pytest.mark.parametrize(
    ("policy", "heads"),
    [
        (lambda: GaussianMLPPolicy(3, 2, (8, 8)), ["mean_head", "value_head"]),
        (lambda: CategoricalMLPPolicy(4, 3, (8,)), ["policy_head", "value_head"]),
    ],
)
def test_anil_adapts_a_policys_action_head_which_is_not_its_last_layer(policy, heads) -> None:
    """The policies' last submodule with parameters is the critic's head: ``--adapt anil``
    adapting it alone would leave the action distribution unadapted (a silent no-op)."""
    model = policy()
    assert head_prefix(model) == "value_head"
    assert anil_heads(model) == heads
    assert anil_heads(TanhMLP()) == [head_prefix(TanhMLP())]


def test_a_declared_anil_head_that_is_not_a_submodule_is_refused() -> None:
    model = TanhMLP()
    model.anil_heads = ("net.1",)  # the activation: no parameters
    with pytest.raises(ValueError, match=r"anil_heads names 'net.1'"):
        anil_heads(model)


def test_the_adapt_anil_flag_adapts_the_policy_heads_of_an_rl_family(tmp_path) -> None:
    from metaopt.cli import main

    out = tmp_path / "run"
    flags = "--iterations 1 --meta-batch 2 --trajectories 2 --horizon 5 --test-tasks 2".split()
    flags += ["--eval-tasks", "2", "--pretrain-iterations", "1", "--eval-every", "0"]
    assert main(["train", "nav2d", "--adapt", "anil", *flags, "--out", str(out), "--quiet"]) == 0
    adapted = json.loads((out / "eval.json").read_text())["adaptation"]["adapt"]
    assert adapted == ["mean_head.bias", "mean_head.weight", "value_head.bias", "value_head.weight"]
