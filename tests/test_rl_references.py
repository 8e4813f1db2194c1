"""Random-policy and optimal returns: published values, Monte Carlo, brute force."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from rl.tabular.env import TabularMDPEnv
from rl.tabular.mdp import (
    TabularMDP,
    normalized_score,
    optimal_q_values,
    optimal_return,
    random_policy_return,
    sample_mdps,
)


def test_reproduces_the_published_averages() -> None:
    """About 10.0 (random) and 21.8 (optimal) for 10 states, 5 actions, horizon 10.

    Tolerance: 5 standard errors of a 3000-task mean plus 0.05 for the rounding of the
    published numbers.
    """
    batch = sample_mdps(np.random.default_rng(2024), 3000, 10, 5)
    random, optimal = random_policy_return(batch, 10), optimal_return(batch, 10)
    for values, published in ((random, 10.0), (optimal, 21.8)):
        tolerance = 0.05 + 5 * values.std() / np.sqrt(values.size)
        assert abs(values.mean() - published) < tolerance
    assert np.all(optimal > random)


def evaluate_forward(task: TabularMDP, actions: np.ndarray) -> float:
    """Exact return of a deterministic time-dependent policy ``actions[t, s]``, forward in time."""
    states = task.transitions.shape[0]
    d = np.zeros(states)
    d[0] = 1.0
    total = 0.0
    for choice in actions:
        total += sum(d[s] * task.reward_means[s, choice[s]] for s in range(states))
        d = sum(d[s] * task.transitions[s, choice[s]] for s in range(states))
    return float(total)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_brute_force_over_all_deterministic_policies(seed: int) -> None:
    """On a tiny MDP, enumerate all (A^S)^H time-dependent deterministic policies.

    The optimum over them is the optimal return; their average is the uniform policy's return
    (an episode meets each time step once, so drawing one action per (t, s) in advance is the
    same as drawing it on the visit).
    """
    task = sample_mdps(np.random.default_rng(seed), 1, 2, 3)[0]
    horizon = 3
    per_step = list(itertools.product(range(3), repeat=2))  # an action for each of the 2 states
    returns = [
        evaluate_forward(task, np.array(policy))
        for policy in itertools.product(per_step, repeat=horizon)
    ]
    assert len(returns) == 9**3
    np.testing.assert_allclose(optimal_return(task, horizon), [max(returns)], rtol=1e-12)
    np.testing.assert_allclose(random_policy_return(task, horizon), [np.mean(returns)], rtol=1e-12)


def monte_carlo(task: TabularMDP, choose, episodes: int, seed: int) -> np.ndarray:
    env = TabularMDPEnv(10, 5, max_episode_steps=10, task=task)
    rng = np.random.default_rng(seed)
    returns = np.empty(episodes)
    for e in range(episodes):
        _, info = env.reset(seed=seed + e)
        total, t, done = 0.0, 0, False
        while not done:
            _, reward, terminated, truncated, info = env.step(choose(rng, t, info["state"]))
            total += reward
            t += 1
            done = terminated or truncated
        returns[e] = total
    return returns


@pytest.mark.parametrize("seed", [3, 4])
def test_references_match_monte_carlo_rollouts_of_the_environment(seed: int) -> None:
    task = sample_mdps(np.random.default_rng(seed), 1, 10, 5)[0]
    q = optimal_q_values(task, 10)[:, 0]  # [H, S, A]

    def uniform(rng, t, s):
        return rng.integers(5)

    def greedy(rng, t, s):
        return int(q[t, s].argmax())

    for choose, exact in (
        (uniform, random_policy_return(task, 10)),
        (greedy, optimal_return(task, 10)),
    ):
        returns = monte_carlo(task, choose, 1500, seed=10 * seed)
        assert abs(returns.mean() - exact[0]) < 5 * returns.std() / np.sqrt(returns.size)


def test_normalized_score_is_zero_for_random_and_one_for_optimal() -> None:
    random, optimal = np.array([10.0, 8.0]), np.array([20.0, 18.0])
    np.testing.assert_allclose(normalized_score(random, random, optimal), [0.0, 0.0])
    np.testing.assert_allclose(normalized_score(optimal, random, optimal), [1.0, 1.0])
    np.testing.assert_allclose(normalized_score(np.array([15.0, 9.0]), random, optimal), [0.5, 0.1])


def test_horizon_is_validated() -> None:
    task = sample_mdps(np.random.default_rng(0), 1, 3, 2)[0]
    with pytest.raises(
        ValueError, match="horizon \\(episode length\\) must be an integer >= 1, got 0"
    ):
        optimal_return(task, 0)
    with pytest.raises(ValueError, match="horizon"):
        random_policy_return(task, -1)
