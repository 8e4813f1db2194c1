"""The exact oracle of rl.oracle, and the meta-gradient estimators of rl.estimators against it.

The estimator tests are statistical. Each runs the estimator on K independent meta-batches of B
copies of one tiny MDP (every copy an independent sample of the estimator), takes the K batch
means, and compares their mean with the exact meta-gradient coordinate by coordinate:
z = (mean − truth) / (std / √K). With K = 40 the batch means are close to normal (each averages
B = 2000 samples) and their standard deviation is estimated from 39 degrees of freedom; a bound
of |z| ≤ 3.6 is a 99% interval per coordinate with a Bonferroni correction over the (at most 8)
policy coordinates (two-sided t quantile 0.99937 with 39 dof ≈ 3.55). The seed estimator's bias
must exceed |z| = 8 on some coordinate, far outside any such interval.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import metaopt
from rl.policy import CategoricalMLPPolicy
from rl.tabular.mdp import (
    TabularMDP,
    TabularMDPBatch,
    optimal_q_values,
    optimal_return,
    random_policy_return,
    sample_mdps,
)
from rl.tabular.oracle import (
    exact_meta_objective,
    expected_gradient_objective,
    expected_return,
    expected_return_of_table,
    tiny_mdp,
)
from rl.tabular.sampler import MDPTensors, sample_trajectories
from rl.tabular.task import MDPTaskBatch
from rl.tabular.truth import estimator_samples, exact_policy_gradient
from rl.task import A2CSettings

Z_BOUND = 3.6
BATCHES, COPIES = 40, 2000


def _policy(states: int = 2, actions: int = 2, hidden=(), seed: int = 1) -> CategoricalMLPPolicy:
    torch.manual_seed(seed)
    model = CategoricalMLPPolicy(states, actions, hidden_sizes=hidden).double()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.5)
    return model


# -- expected returns ---------------------------------------------------------------------------


@pytest.mark.parametrize("horizon", [1, 4, 10])
def test_uniform_and_optimal_policies_give_the_exact_references(horizon: int) -> None:
    for mdp in sample_mdps(np.random.default_rng(horizon), 5, num_states=4, num_actions=3):
        uniform = torch.full((4, 3), 1 / 3, dtype=torch.float64)
        got = expected_return_of_table(uniform, mdp, horizon).item()
        assert got == pytest.approx(random_policy_return(mdp, horizon)[0], rel=1e-12)
        q = optimal_q_values(mdp, horizon)[:, 0]  # [H, S, A]
        greedy = torch.nn.functional.one_hot(torch.as_tensor(q.argmax(-1)), 3).double()
        got = expected_return_of_table(greedy, mdp, horizon).item()
        assert got == pytest.approx(optimal_return(mdp, horizon)[0], rel=1e-12)


def test_expected_return_matches_monte_carlo_returns() -> None:
    mdp = sample_mdps(np.random.default_rng(0), 1, num_states=5, num_actions=3)[0]
    policy = _policy(5, 3, hidden=(8,))
    exact = expected_return(policy, mdp, 6).item()
    tensors = MDPTensors.from_mdps(mdp, dtype=torch.float64)
    with torch.no_grad():
        returns = sample_trajectories(
            policy, tensors, 200_000, 6, torch.Generator().manual_seed(0)
        ).episode_returns()
    z = (returns.mean().item() - exact) / (returns.std().item() / returns.numel() ** 0.5)
    assert abs(z) < 4.0, f"Monte-Carlo mean {returns.mean().item():.4f} vs exact {exact:.4f}"


def test_expected_gradient_objective_matches_finite_differences() -> None:
    mdp = sample_mdps(np.random.default_rng(1), 1, num_states=3, num_actions=2)[0]
    model = _policy(3, 2, hidden=(4,))
    params = [p for p in model.parameters() if p.requires_grad]
    objective = expected_gradient_objective(model, mdp, horizon=5, lr=0.7)
    grads = torch.autograd.grad(objective, params, allow_unused=True)
    eps = 1e-6
    for p, g in zip(params, grads, strict=True):
        g = torch.zeros_like(p) if g is None else g
        for index in range(p.numel()):
            p.data.view(-1)[index] += eps
            up = expected_gradient_objective(model, mdp, 5, 0.7).item()
            p.data.view(-1)[index] -= 2 * eps
            down = expected_gradient_objective(model, mdp, 5, 0.7).item()
            p.data.view(-1)[index] += eps
            assert g.view(-1)[index].item() == pytest.approx((up - down) / (2 * eps), abs=1e-7)
    # and it is not the plain return: the inner step changes the objective
    assert objective.item() != pytest.approx(expected_return(model, mdp, 5).item(), abs=1e-3)


# -- the exact meta-objective ----------------------------------------------------------------


def _settings(estimator: str, trajectories: int = 1) -> A2CSettings:
    return A2CSettings(
        trajectories=trajectories, horizon=2, reward_noise=0.0, meta_gradient=estimator
    )


def test_meta_objective_weights_are_a_distribution() -> None:
    # A vanishing inner step leaves J(θ): the enumerated probabilities sum to one.
    mdp = tiny_mdp(3)
    model = _policy()
    algo = metaopt.MAML(model, inner_lr=1e-12, inner_steps=2)
    got = exact_meta_objective(algo, mdp, _settings("seed"))
    assert got.item() == pytest.approx(expected_return(model, mdp, 2).item(), abs=1e-9)


def test_meta_objective_refuses_noisy_rewards_and_too_many_data_sets() -> None:
    algo = metaopt.MAML(_policy(), inner_lr=0.1)
    with pytest.raises(ValueError, match="reward_noise must be 0"):
        exact_meta_objective(algo, tiny_mdp(), A2CSettings(horizon=2))
    with pytest.raises(ValueError, match="too many to enumerate"):
        exact_meta_objective(algo, tiny_mdp(), _settings("seed", trajectories=6))


# -- the estimators against the truth -------------------------------------------------------


def _estimates(make_algo, mdp: TabularMDP, settings: A2CSettings, seed: int) -> torch.Tensor:
    """[K, P] batch means of the estimate of ∇M over the policy's meta-parameters."""
    return estimator_samples(make_algo, mdp, settings, BATCHES, COPIES, seed * 1000)


def _truth(make_algo, mdp: TabularMDP, settings: A2CSettings) -> torch.Tensor:
    return exact_policy_gradient(make_algo(), mdp, settings)


# name -> (algorithm, support episodes per inner step: 1 uses the critic's baseline, 2 the
# leave-one-out one)
CASES = {
    "maml-1step": (lambda: metaopt.MAML(_policy(), inner_lr=0.5, inner_steps=1), 1),
    "maml-2step": (lambda: metaopt.MAML(_policy(), inner_lr=0.5, inner_steps=2), 1),
    "maml-2episodes": (lambda: metaopt.MAML(_policy(), inner_lr=0.5, inner_steps=1), 2),
    "metasgd": (lambda: metaopt.MetaSGD(_policy(), inner_lr=0.5, inner_steps=1), 1),
    "fomaml-2episodes": (
        lambda: metaopt.MAML(_policy(), inner_lr=0.5, inner_steps=1, first_order=True),
        2,
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_dice_is_unbiased_against_the_exact_meta_gradient(case: str) -> None:
    # First-order MAML's meta-gradient (∂U/∂θ = I) is exact for the objective it optimises:
    # the oracle differentiates its own inner steps without their second derivatives.
    make, episodes = CASES[case]
    mdp = tiny_mdp(3)
    truth = _truth(make, mdp, _settings("dice", episodes))
    samples = _estimates(make, mdp, _settings("dice", episodes), seed=1)
    z = (samples.mean(0) - truth) / (samples.std(0) / BATCHES**0.5)
    assert z.abs().max() <= Z_BOUND, f"z = {z.numpy().round(2)}"


def test_the_seed_estimator_is_measurably_biased() -> None:
    make, _ = CASES["maml-1step"]
    mdp = tiny_mdp(3)
    truth = _truth(make, mdp, _settings("seed"))
    samples = _estimates(make, mdp, _settings("seed"), seed=2)
    z = (samples.mean(0) - truth) / (samples.std(0) / BATCHES**0.5)
    assert z.abs().max() > 8.0, f"z = {z.numpy().round(2)}"


@pytest.mark.parametrize("estimator", ["seed", "dice", "lvc"])
def test_both_engines_compute_the_same_estimate(estimator: str) -> None:
    mdps = sample_mdps(np.random.default_rng(0), 4)
    grads = {}
    for engine in ("loop", "vmap"):
        torch.manual_seed(0)
        model = CategoricalMLPPolicy(10, 5)
        settings = A2CSettings(meta_gradient=estimator)
        batch = MDPTaskBatch(mdps, settings, torch.Generator().manual_seed(1))
        algo = metaopt.MAML(model, inner_lr=0.1, inner_steps=2, engine=engine)
        algo.meta_backward(batch if engine == "vmap" else list(batch))
        assert algo.last_engine == engine
        grads[engine] = torch.cat([p.grad.flatten() for p in model.parameters()])
    difference = (grads["vmap"] - grads["loop"]).norm() / grads["loop"].norm()
    assert difference <= 1e-5


def test_lvc_changes_the_curvature_not_the_inner_step() -> None:
    # Same support-loss values and first derivatives as the seed's (so the same adapted
    # policy); a different second derivative.
    mdp = tiny_mdp(3)
    model = _policy()
    batches = {}
    for estimator in ("seed", "lvc"):
        batch = MDPTaskBatch(
            TabularMDPBatch(mdp.transitions[None], mdp.reward_means[None]),
            _settings(estimator, trajectories=4),
            torch.Generator().manual_seed(0),
        )
        batch.tensors = MDPTensors.from_mdps(batch.mdps, dtype=torch.float64)
        trajectories = batch.sample(model, "support0")
        loss = batch.support_objective(model, trajectories)
        params = list(model.policy_head.parameters())
        grads = torch.autograd.grad(loss, params, create_graph=True)
        hessian = torch.autograd.grad(grads[1][0], params[1])[0]
        batches[estimator] = (loss.detach(), [g.detach() for g in grads], hessian)
    (l1, g1, h1), (l2, g2, h2) = batches["seed"], batches["lvc"]
    torch.testing.assert_close(l2, l1, rtol=1e-12, atol=1e-12)
    for a, b in zip(g1, g2, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-12, atol=1e-12)
    assert (h1 - h2).abs().max() > 1e-3


def test_compare_mdp_reports_every_estimator_against_the_truth(tmp_path) -> None:
    import json

    from metaopt.tools import compare as mc
    from metaopt.training.config import resolve_config
    from rl.tabular.family import MDPFamily

    family = MDPFamily()
    config = resolve_config(family, {"meta_batch": 4, "iterations": 0, "trajectories": 4})
    options = mc.CompareOptions(
        methods=("fomaml", "reptile"),
        steps=(1,),
        checkpoints=0,
        repeats=1,
        curves=False,
        batches=1,
        truth_batches=2,
    )
    results = mc.compare_methods(family, config, tmp_path / "r", options, progress=False)
    rows = results["truth"]["rows"]
    assert [(r["method"], r["estimator"]) for r in rows] == [
        (m, e) for m in ("maml", "fomaml") for e in ("seed", "dice", "lvc")
    ]
    for row in rows:
        assert -1.0 <= row["cosine"] <= 1.0 and row["relative_error"] >= 0
        assert row["noise"] > 0 and row["variance"] > 0
    assert "reptile" in results["truth"]["not_applicable"]
    report = (tmp_path / "r" / "report.md").read_text()
    assert (
        "## Against the exact meta-gradient" in report and "| first-order MAML | dice |" in report
    )
    saved = json.loads((tmp_path / "r" / "results.json").read_text())
    assert saved["truth"]["setting"]["samples"] == 2 * 2000
