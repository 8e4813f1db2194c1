"""The trust-region outer step (metaopt.trust_region) and MAML-TRPO on nav2d (rl.trust_region):
CG against a dense solve, the Hessian-vector product against an explicit float64 Hessian, the
step against its closed form on a quadratic, the line search's accept and reject, the KL bound,
the nav2d pieces against independent computations, refusals and exact resume."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from torch import nn
from torch.func import functional_call

from metaopt.cli import main
from metaopt.trust_region import (
    TrustRegionSettings,
    conjugate_gradient,
    hessian_vector_product,
    trust_region_step,
)
from rl.continuous import GaussianMLPPolicy, gaussian_kl


def _spd(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(n, n, generator=g, dtype=torch.float64)
    return a @ a.T + 0.1 * torch.eye(n, dtype=torch.float64)


def test_conjugate_gradient_matches_a_dense_solve() -> None:
    a = _spd(8)
    b = torch.linspace(-1, 2, 8, dtype=torch.float64)
    x = conjugate_gradient(lambda v: a @ v, b, steps=8)
    torch.testing.assert_close(x, torch.linalg.solve(a, b), rtol=1e-7, atol=1e-9)
    # fewer steps: an approximation that still lowers the residual from that of x = 0
    rough = conjugate_gradient(lambda v: a @ v, b, steps=3)
    assert (a @ rough - b).norm() < b.norm()


def test_hessian_vector_product_matches_the_explicit_hessian_of_a_gaussian_kl() -> None:
    """The product of a tiny Gaussian policy's KL to its start, float64, against
    torch.autograd.functional.hessian of the same KL as a function of the flat parameters."""
    torch.manual_seed(0)
    policy = GaussianMLPPolicy(2, 2, (3,), init_log_std=-0.5).double()
    names = [n for n, p in policy.named_parameters() if not n.startswith("value")]
    start = {n: p.detach().clone() for n, p in policy.named_parameters()}
    obs = torch.randn(7, 2, dtype=torch.float64)
    with torch.no_grad():
        old_mean, old_log_std = (x.clone() for x in policy(obs)[:2])
    shapes = [start[n].shape for n in names]

    def kl_of(flat: torch.Tensor) -> torch.Tensor:
        pieces = dict(start)
        offset = 0
        for name, shape in zip(names, shapes, strict=True):
            pieces[name] = flat[offset : offset + shape.numel()].view(shape)
            offset += shape.numel()
        mean, log_std, _ = functional_call(policy, pieces, (obs,))
        return gaussian_kl(old_mean, old_log_std, mean, log_std).mean()

    theta = torch.cat([start[n].reshape(-1) for n in names])
    # away from the start too, where the KL's Hessian is not the Fisher matrix
    point = theta + 0.3 * torch.randn_like(theta)
    params = [p for n, p in policy.named_parameters() if n in names]
    with torch.no_grad():
        offset = 0
        for p in params:
            p.copy_(point[offset : offset + p.numel()].view_as(p))
            offset += p.numel()
    mean, log_std, _ = policy(obs)
    kl = gaussian_kl(old_mean, old_log_std, mean, log_std).mean()
    gradient = torch.autograd.grad(kl, params, create_graph=True)
    product = hessian_vector_product(gradient, params, damping=0.25)
    hessian = torch.autograd.functional.hessian(kl_of, point)
    v = torch.randn_like(theta)
    torch.testing.assert_close(product(v), hessian @ v + 0.25 * v, rtol=1e-9, atol=1e-11)


def test_gaussian_kl_matches_torch_distributions() -> None:
    g = torch.Generator().manual_seed(1)
    m, s, m2, s2 = (torch.randn(5, 3, generator=g, dtype=torch.float64) for _ in range(4))
    p = torch.distributions.Normal(m, s.exp())
    q = torch.distributions.Normal(m2, s2.exp())
    expected = torch.distributions.kl_divergence(p, q).sum(-1)
    torch.testing.assert_close(gaussian_kl(m, s, m2, s2), expected)


class _Quadratic:
    """A divergence ½(θ − θ₀)ᵀF(θ − θ₀) (times ``inflate`` in what :meth:`evaluate` reports,
    a divergence larger than its quadratic model) and a linear surrogate ``sign``·gᵀθ."""

    def __init__(
        self, theta: nn.Parameter, fisher: torch.Tensor, g: torch.Tensor, sign: float = 1.0
    ) -> None:
        self.theta, self.fisher, self.g, self.sign = theta, fisher, g, sign
        self.start = theta.detach().clone()
        self.inflate = 1.0

    def divergence(self) -> torch.Tensor:
        d = self.theta - self.start
        return 0.5 * d @ self.fisher @ d

    def evaluate(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.sign * self.g @ self.theta, self.inflate * self.divergence()


def _quadratic(sign: float = 1.0) -> tuple[nn.Parameter, nn.Parameter, _Quadratic]:
    theta = nn.Parameter(torch.linspace(0.5, -0.5, 5, dtype=torch.float64))
    other = nn.Parameter(torch.ones(3, dtype=torch.float64))  # the divergence ignores it
    g = torch.tensor([1.0, -2.0, 0.5, 0.0, 3.0], dtype=torch.float64)
    theta.grad, other.grad = g.clone(), torch.full_like(other, 7.0)
    return theta, other, _Quadratic(theta, _spd(5, 3), g, sign)


SETTINGS = TrustRegionSettings(max_kl=0.01, cg_steps=5, damping=1e-8)


def test_step_is_the_closed_form_on_a_quadratic_and_keeps_the_kl_bound() -> None:
    theta, other, problem = _quadratic()
    start = theta.detach().clone()
    step = trust_region_step([theta, other], problem, SETTINGS)
    damped = problem.fisher + SETTINGS.damping * torch.eye(5, dtype=torch.float64)
    s = torch.linalg.solve(damped, problem.g)
    expected = start - (2 * SETTINGS.max_kl / (s @ damped @ s)) ** 0.5 * s
    torch.testing.assert_close(theta.detach(), expected, rtol=1e-7, atol=1e-10)
    assert step.accepted and step.fraction == 1.0 and step.backtracks == 0
    assert step.kl <= SETTINGS.max_kl and step.kl == pytest.approx(SETTINGS.max_kl, rel=1e-6)
    assert step.improvement > 0
    # the parameter the divergence does not reach keeps its gradient and value for the caller
    assert theta.grad is None
    torch.testing.assert_close(other.grad, torch.full_like(other, 7.0))
    torch.testing.assert_close(other.detach(), torch.ones_like(other))


def test_line_search_backtracks_until_the_kl_bound_holds() -> None:
    theta, other, problem = _quadratic()
    problem.inflate = 2.0  # the true divergence is twice its quadratic model: 2·f²·ε ≤ ε
    step = trust_region_step([theta, other], problem, SETTINGS)
    assert step.accepted and step.backtracks == 2
    assert step.fraction == pytest.approx(0.8**2)
    assert step.kl <= SETTINGS.max_kl


def test_line_search_rejects_a_step_that_does_not_lower_the_surrogate() -> None:
    theta, other, problem = _quadratic(sign=-1.0)  # the surrogate rises along −g
    start = theta.detach().clone()
    step = trust_region_step([theta, other], problem, SETTINGS)
    assert not step.accepted and step.fraction == 0.0
    assert step.backtracks == SETTINGS.backtracks
    assert torch.equal(theta.detach(), start)  # restored bit for bit


# -- MAML-TRPO on nav2d -------------------------------------------------------------------------


def _nav2d_step(algo_name: str = "maml", **overrides):  # type: ignore[no-untyped-def]
    from metaopt.training.build import build_algorithm
    from rl.nav2d.family import Nav2DConfig, Nav2DFamily

    family = Nav2DFamily()
    values = {"meta_batch": 3, "trajectories": 4, "horizon": 12, "hidden_sizes": (8,)}
    config = Nav2DConfig(algo=algo_name, outer_optimizer="trpo", **{**values, **overrides})
    config.validate()
    torch.manual_seed(0)
    model = family.make_model(config)
    with torch.no_grad():  # a mean that moves, so the episodes differ between goals
        model.mean_head.weight.mul_(50.0)
    algo = build_algorithm(config, model)
    tasks = family.sample_tasks(config, np.random.default_rng(3), config.meta_batch)
    algo.meta_backward(tasks, scale=1 / len(tasks))
    problem, settings = family.trust_region(algo, config, tasks)
    return model, algo, problem, settings


def _policy_params(model: nn.Module) -> list[nn.Parameter]:
    return [p for n, p in model.named_parameters() if not n.startswith("value")]


@pytest.mark.parametrize("algo_name", ["maml", "fomaml", "metasgd"])
def test_nav2d_gradient_is_the_surrogates_and_the_divergence_starts_flat(algo_name) -> None:  # type: ignore[no-untyped-def]
    """meta_backward's gradient of the policy's parameters is the surrogate's at θ₀ (the
    importance-weighted A2C loss on the same episodes), where the divergence is 0, flat."""
    model, _algo, problem, _ = _nav2d_step(algo_name)
    params = _policy_params(model)
    surrogate, divergence = problem.evaluate()
    expected = torch.autograd.grad(surrogate, params)
    for p, e in zip(params, expected, strict=True):
        torch.testing.assert_close(p.grad, e, rtol=1e-4, atol=1e-6)
    assert abs(divergence.item()) < 1e-6
    first = torch.autograd.grad(problem.divergence(), params, allow_unused=True)
    assert max(f.abs().max().item() for f in first if f is not None) < 1e-5


def test_nav2d_hessian_of_the_divergence_is_the_adapted_policies_fisher_matrix() -> None:
    r"""At θ₀ the KL's Hessian (through the second-order inner step) equals the Fisher matrix
    :math:`J^\top M J` of the adapted means and log-stds, computed here from their Jacobian
    J (by two vector-Jacobian products) and M = diag(1/σ², 2) per step: an independent route."""
    model, _algo, problem, _ = _nav2d_step()
    params = _policy_params(model)
    first = torch.autograd.grad(problem.divergence(), params, create_graph=True)
    product = hessian_vector_product(first, params)
    v = torch.randn(sum(p.numel() for p in params), generator=torch.Generator().manual_seed(0))

    mean, log_std, _ = problem.scorer.evaluate(problem._adapted(), problem.query)
    mask = problem.query.mask
    weight = (mask / mask.sum((0, 2), keepdim=True) / mask.shape[1])[..., None]
    outputs = torch.cat([mean, log_std], -1)
    u = torch.zeros_like(outputs, requires_grad=True)
    jt_u = torch.autograd.grad(outputs, params, u, create_graph=True)
    flat_jt_u = torch.cat([x.reshape(-1) for x in jt_u])
    (jv,) = torch.autograd.grad(flat_jt_u @ v, u, retain_graph=True)  # J v
    metric = torch.cat([torch.exp(-2 * log_std), torch.full_like(log_std, 2.0)], -1).detach()
    fisher_v = torch.autograd.grad(outputs, params, weight * metric * jv)
    expected = torch.cat([x.reshape(-1) for x in fisher_v])
    torch.testing.assert_close(product(v), expected, rtol=2e-3, atol=1e-5)


def test_nav2d_step_keeps_the_kl_bound_and_leaves_the_critic_to_adam() -> None:
    model, algo, problem, settings = _nav2d_step()
    critic = {n: p.grad.clone() for n, p in model.named_parameters() if n.startswith("value")}
    start = [p.detach().clone() for p in _policy_params(model)]
    step = trust_region_step(algo.meta_parameters(), problem, settings)
    assert step.accepted
    with torch.no_grad():
        _surrogate, kl = problem.evaluate()
    assert kl.item() <= settings.max_kl and kl.item() == pytest.approx(step.kl)
    assert any(not torch.equal(p, s) for p, s in zip(_policy_params(model), start, strict=True))
    for name, p in model.named_parameters():
        if name.startswith("value"):
            assert torch.equal(p.grad, critic[name])
        else:
            assert p.grad is None


def test_nav2d_step_is_deterministic() -> None:
    runs = []
    for _ in range(2):
        model, algo, problem, settings = _nav2d_step()
        trust_region_step(algo.meta_parameters(), problem, replace(settings, max_kl=0.05))
        runs.append([p.detach().clone() for p in model.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*runs, strict=True))


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["nav2d", "--algo", "reptile"], "--outer-optimizer trpo: --algo reptile"),
        (["nav2d", "--meta-gradient", "dice"], "--outer-optimizer trpo: it needs --meta-gradient"),
        (["nav2d", "--shared-torso"], "--outer-optimizer trpo: it needs --no-shared-torso"),
        (["mdp"], "--outer-optimizer must be one of adam, sgd; got 'trpo'"),
        (["sine"], "--outer-optimizer must be one of adam, sgd; got 'trpo'"),
        (["nav2d", "--max-kl", "0"], "--max-kl must be"),
        (["nav2d", "--line-search-ratio", "1"], "--line-search-ratio must be"),
    ],
)
def test_trpo_refusals_are_one_line(argv, message, capsys) -> None:  # type: ignore[no-untyped-def]
    assert main(["train", *argv, "--outer-optimizer", "trpo"]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


@pytest.mark.parametrize(
    ("values", "step"),
    [
        ({}, "trpo"),
        ({"algo": "fomaml"}, "trpo"),
        ({"algo": "reptile"}, "adam"),
        ({"meta_gradient": "dice"}, "adam"),
        ({"shared_torso": True, "critic_time": False}, "adam"),
        ({"outer_optimizer": "sgd"}, "sgd"),
    ],
)
def test_nav2d_auto_outer_step_is_trpo_where_it_applies(values, step) -> None:  # type: ignore[no-untyped-def]
    from metaopt.training.build import build_algorithm, build_outer_optimizer
    from rl.nav2d.family import Nav2DConfig, Nav2DFamily

    config = Nav2DConfig(**values)
    config.validate()
    assert config.outer_step == step
    outer, _ = build_outer_optimizer(
        config, build_algorithm(config, Nav2DFamily().make_model(config))
    )
    assert type(outer).__name__ == ("SGD" if step == "sgd" else "Adam")
