"""λ-returns, GAE and the A2C loss against plain Python loops in float64."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from rl.losses import a2c_loss, lambda_returns
from rl.policy import CategoricalMLPPolicy
from rl.tabular.losses import trajectory_a2c_loss
from rl.tabular.mdp import sample_mdps
from rl.tabular.sampler import MDPTensors, sample_trajectories

H = 7


def random_inputs(seed: int, shape=(H, 3, 4)) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    rewards = torch.randn(shape, generator=g, dtype=torch.float64)
    next_values = torch.randn(shape, generator=g, dtype=torch.float64)
    return rewards, next_values


def forward_view(
    rewards: list[float], next_values: list[float], gamma: float, lam: float
) -> list[float]:
    """Truncated λ-return by its definition (Sutton & Barto 2018, eq. 12.9), one trajectory.

    G_{t:H}^λ = (1 − λ) Σ_{n=1}^{H−t−1} λ^{n−1} G_{t:t+n} + λ^{H−t−1} G_{t:H}, with the n-step
    return G_{t:t+n} = Σ_{k<n} γ^k r_{t+k} + γ^n V(s_{t+n}) and V(s_{t+n}) = next_values[t+n−1].
    """
    horizon = len(rewards)

    def n_step(t: int, n: int) -> float:
        return sum(gamma**k * rewards[t + k] for k in range(n)) + gamma**n * next_values[t + n - 1]

    out = []
    for t in range(horizon):
        remaining = horizon - t
        g = sum((1 - lam) * lam ** (n - 1) * n_step(t, n) for n in range(1, remaining))
        out.append(g + lam ** (remaining - 1) * n_step(t, remaining))
    return out


@pytest.mark.parametrize("lam", [0.0, 0.5, 0.95, 1.0])
@pytest.mark.parametrize("gamma", [0.99, 0.7])
def test_lambda_returns_match_the_forward_view(gamma: float, lam: float) -> None:
    rewards, next_values = random_inputs(0)
    got = lambda_returns(rewards, next_values, gamma, lam)
    for i in range(3):
        for j in range(4):
            expected = forward_view(
                rewards[:, i, j].tolist(), next_values[:, i, j].tolist(), gamma, lam
            )
            np.testing.assert_allclose(got[:, i, j].numpy(), expected, rtol=1e-12, atol=1e-12)


def test_lambda_zero_is_one_step_td_and_one_is_monte_carlo() -> None:
    rewards, next_values = random_inputs(1)
    gamma = 0.9
    torch.testing.assert_close(
        lambda_returns(rewards, next_values, gamma, 0.0), rewards + gamma * next_values
    )
    mc = lambda_returns(rewards, next_values, gamma, 1.0)
    for t in range(H):
        discounted = sum(gamma**k * rewards[t + k] for k in range(H - t))
        torch.testing.assert_close(mc[t], discounted + gamma ** (H - t) * next_values[-1])


def test_advantages_are_gae() -> None:
    """G^λ − V(s_t) equals Σ_k (γλ)^k δ_{t+k}, computed by a plain loop over the TD errors."""
    rewards, next_values = random_inputs(2, shape=(H,))
    values = torch.cat([torch.randn(1, dtype=torch.float64), next_values[:-1]])  # V(s_t)
    gamma, lam = 0.99, 0.95
    advantages = (lambda_returns(rewards, next_values, gamma, lam) - values).tolist()
    deltas = [rewards[t] + gamma * next_values[t] - values[t] for t in range(H)]
    for t in range(H):
        expected = sum((gamma * lam) ** k * deltas[t + k] for k in range(H - t))
        assert math.isclose(advantages[t], float(expected), rel_tol=1e-12, abs_tol=1e-12)


def test_per_step_discounts_cut_at_a_terminal() -> None:
    rewards, next_values = random_inputs(3, shape=(H,))
    discounts = torch.full((H,), 0.9, dtype=torch.float64)
    discounts[3] = 0.0  # step 3 ends an episode: nothing after it flows back
    got = lambda_returns(rewards, next_values, discounts, 0.8)
    head = forward_view(rewards[:4].tolist(), [*next_values[:3].tolist(), 0.0], 0.9, 0.8)
    tail = forward_view(rewards[4:].tolist(), next_values[4:].tolist(), 0.9, 0.8)
    np.testing.assert_allclose(got.numpy(), head + tail, rtol=1e-12)


def test_lambda_returns_reject_bad_input() -> None:
    rewards, next_values = random_inputs(0)
    with pytest.raises(ValueError, match="lam \\(GAE λ\\) must be in \\[0, 1\\], got 1.5"):
        lambda_returns(rewards, next_values, 0.9, 1.5)
    with pytest.raises(ValueError, match="differ"):
        lambda_returns(rewards, next_values[:-1], 0.9, 0.5)


def test_a2c_loss_matches_a_plain_computation_and_detaches_the_advantage() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(5, 3, generator=g, dtype=torch.float64, requires_grad=True)
    values = torch.randn(5, generator=g, dtype=torch.float64, requires_grad=True)
    returns = torch.randn(5, generator=g, dtype=torch.float64)
    actions = torch.tensor([0, 2, 1, 1, 0])
    loss = a2c_loss(logits, actions, values, returns, value_coef=0.5, entropy_coef=0.01)
    expected = 0.0
    for i in range(5):
        z = logits[i].tolist()
        log_norm = math.log(sum(math.exp(v) for v in z))
        log_p = [v - log_norm for v in z]
        advantage = returns[i].item() - values[i].item()
        entropy = -sum(math.exp(lp) * lp for lp in log_p)
        expected += (-log_p[actions[i]] * advantage + 0.5 * advantage**2 - 0.01 * entropy) / 5
    assert math.isclose(loss.item(), expected, rel_tol=1e-12)
    loss.backward()
    # The policy term must not push the critic: d loss / d V = −2 c_v (R − V) / n only.
    torch.testing.assert_close(values.grad, -2 * 0.5 * (returns - values.detach()) / 5)


def test_trajectory_loss_equals_a_forward_pass_per_visited_state() -> None:
    """The table lookup of the loss is the same function of θ as evaluating every visited state."""
    torch.manual_seed(0)
    model = CategoricalMLPPolicy(10, 5).double()
    mdps = MDPTensors.from_mdps(
        sample_mdps(np.random.default_rng(0), 2, 10, 5), dtype=torch.float64
    )
    traj = sample_trajectories(model, mdps, 6, 10, torch.Generator().manual_seed(0))
    kwargs = {"gamma": 0.99, "gae_lambda": 0.95, "value_coef": 0.5, "entropy_coef": 0.0}
    loss = trajectory_a2c_loss(model, traj, 10, **kwargs)
    got = torch.autograd.grad(loss, list(model.parameters()))

    # Reference: a forward pass per time step on the one-hot observations, returns by the loop
    # of the forward view.
    eye = torch.eye(10, dtype=torch.float64)
    logits, values = zip(*(model(eye[traj.states[t]]) for t in range(10)), strict=True)
    logits, values = torch.stack(logits), torch.stack(values)
    _, last_value = model(eye[traj.next_states[-1]])
    next_values = torch.cat([values[1:], last_value[None]]).detach()
    returns = torch.zeros_like(values)
    for i in range(2):
        for j in range(6):
            returns[:, i, j] = torch.tensor(
                forward_view(
                    traj.rewards[:, i, j].tolist(), next_values[:, i, j].tolist(), 0.99, 0.95
                )
            )
    log_p = torch.log_softmax(logits, -1).gather(-1, traj.actions[..., None])[..., 0]
    advantage = returns - values
    reference = -(log_p * advantage.detach()).mean() + 0.5 * advantage.pow(2).mean()
    expected = torch.autograd.grad(reference, list(model.parameters()))
    torch.testing.assert_close(loss, reference)
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("lam", [0.0, 0.3, 1.0])
def test_constant_discount_fast_path_equals_the_loop(lam: float) -> None:
    """A float γ takes a matrix-product path, a tensor γ the backward loop: same numbers."""
    rewards, next_values = random_inputs(4)
    fast = lambda_returns(rewards, next_values, 0.97, lam)
    loop = lambda_returns(rewards, next_values, torch.tensor(0.97, dtype=torch.float64), lam)
    torch.testing.assert_close(fast, loop, rtol=1e-12, atol=1e-12)
