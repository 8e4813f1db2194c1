"""The vectorised sampler against the Gymnasium environment and against exact expectations.

Tolerances come from the sample sizes: every comparison is a z-score (difference over its
standard error under the hypothesis that both sides follow the same distribution) and must stay
below Z_MAX. With a few hundred comparisons, |z| > 5 happens by chance with probability < 1e-3;
a wrong sampler (tested below with a perturbed task) gives z-scores in the tens.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rl.tabular.env import TabularMDPEnv
from rl.tabular.mdp import TabularMDP, sample_mdps
from rl.tabular.sampler import MDPTensors, SamplingNoise, sample_trajectories, simulate

Z_MAX = 5.0
S, A, H = 4, 3, 6
EPISODES = 3000


def table_policy(logits: torch.Tensor):
    """A policy given by a logits table [S, A] (shared) or [T, S, A] (one per task)."""

    def policy(obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if logits.dim() == 2:
            return obs @ logits, obs.sum(-1) * 0
        return torch.einsum("tns,tsa->tna", obs, logits), obs.sum(-1) * 0

    return policy


@pytest.fixture(scope="module")
def setting() -> tuple[TabularMDP, np.ndarray]:
    task = sample_mdps(np.random.default_rng(7), 1, S, A)[0]
    logits = np.random.default_rng(8).normal(0.0, 1.0, (S, A))
    return task, logits


def softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def env_rollouts(task: TabularMDP, logits: np.ndarray, episodes: int, seed: int) -> dict:
    """The reference semantics: the Gymnasium environment stepped in Python."""
    env = TabularMDPEnv(S, A, max_episode_steps=H, task=task)
    pi = softmax(logits)
    rng = np.random.default_rng(seed)
    states = np.zeros((H, episodes), dtype=np.int64)
    actions, next_states = np.zeros_like(states), np.zeros_like(states)
    rewards = np.zeros((H, episodes))
    for e in range(episodes):
        _, info = env.reset(seed=seed + e)
        state = info["state"]
        for t in range(H):
            action = rng.choice(A, p=pi[state])
            _, reward, _, truncated, info = env.step(action)
            states[t, e], actions[t, e], rewards[t, e] = state, action, reward
            next_states[t, e] = state = info["state"]
        assert truncated
    return {"states": states, "actions": actions, "rewards": rewards, "next_states": next_states}


def sampler_rollouts(task: TabularMDP, logits: np.ndarray, episodes: int, seed: int) -> dict:
    generator = torch.Generator().manual_seed(seed)
    policy = table_policy(torch.as_tensor(logits, dtype=torch.float32))
    traj = sample_trajectories(policy, MDPTensors.from_mdps(task), episodes, H, generator)
    return {k: getattr(traj, k)[:, 0].double().numpy() for k in traj._fields}


def exact_visitation(task: TabularMDP, logits: np.ndarray) -> np.ndarray:
    """[H, S] distribution of the state at each step, by the forward recursion."""
    pi = softmax(logits)
    chain = np.einsum("sa,sap->sp", pi, task.transitions)
    d = np.zeros((H, S))
    d[0, 0] = 1.0
    for t in range(1, H):
        d[t] = d[t - 1] @ chain
    return d


def z_against_exact(data: dict, task: TabularMDP, logits: np.ndarray) -> list[float]:
    """z-scores of one sample against the exact distribution it should follow."""
    z = []
    n = data["states"].shape[1]
    visitation = exact_visitation(task, logits)
    pi = softmax(logits)
    for t in range(H):
        for s in range(S):
            for a in range(A):
                p = visitation[t, s] * pi[s, a]
                if 0 < p < 1:
                    freq = np.mean((data["states"][t] == s) & (data["actions"][t] == a))
                    z.append((freq - p) / np.sqrt(p * (1 - p) / n))
    states, actions = data["states"].ravel(), data["actions"].ravel()
    for s in range(S):
        for a in range(A):
            mask = (states == s) & (actions == a)
            count = mask.sum()
            if count < 30:
                continue
            # Reward ~ N(R(s, a), 1): the mean of `count` rewards has standard error 1/sqrt(count).
            z.append(
                (data["rewards"].ravel()[mask].mean() - task.reward_means[s, a]) * np.sqrt(count)
            )
            following = data["next_states"].ravel()[mask]
            for s2 in range(S):
                p = task.transitions[s, a, s2]
                if 0 < p < 1:
                    freq = np.mean(following == s2)
                    z.append((freq - p) / np.sqrt(p * (1 - p) / count))
    return z


def z_two_sample(x: dict, y: dict) -> list[float]:
    """z-scores of the difference of two samples, per (state, action): rewards and next states."""
    z = []
    for s in range(S):
        for a in range(A):
            mx = (x["states"] == s) & (x["actions"] == a)
            my = (y["states"] == s) & (y["actions"] == a)
            nx, ny = mx.sum(), my.sum()
            if min(nx, ny) < 30:
                continue
            diff = x["rewards"][mx].mean() - y["rewards"][my].mean()
            z.append(diff / np.sqrt(1 / nx + 1 / ny))
            for s2 in range(S):
                px, py = np.mean(x["next_states"][mx] == s2), np.mean(y["next_states"][my] == s2)
                pooled = (px * nx + py * ny) / (nx + ny)
                if 0 < pooled < 1:
                    z.append((px - py) / np.sqrt(pooled * (1 - pooled) * (1 / nx + 1 / ny)))
    return z


def test_sampler_matches_the_gymnasium_environment(setting) -> None:
    task, logits = setting
    env_data = env_rollouts(task, logits, EPISODES, seed=100)
    sampler_data = sampler_rollouts(task, logits, EPISODES, seed=200)
    for data in (env_data, sampler_data):
        z = z_against_exact(data, task, logits)
        assert len(z) > 100
        assert np.max(np.abs(z)) < Z_MAX
    z = z_two_sample(env_data, sampler_data)
    assert len(z) > 40
    assert np.max(np.abs(z)) < Z_MAX
    # Mean returns agree (each episode's return has variance <= H * (1 + spread of R)).
    ret_env, ret_sampler = env_data["rewards"].sum(0), sampler_data["rewards"].sum(0)
    se = np.sqrt(ret_env.var() / EPISODES + ret_sampler.var() / EPISODES)
    assert abs(ret_env.mean() - ret_sampler.mean()) < Z_MAX * se


def test_the_statistical_test_detects_a_wrong_sampler(setting) -> None:
    """Power check: a task with its transition rows swapped fails the same comparison."""
    task, logits = setting
    wrong = TabularMDP(task.transitions[:, ::-1].copy(), task.reward_means)
    data = sampler_rollouts(wrong, logits, EPISODES, seed=200)
    assert np.max(np.abs(z_against_exact(data, task, logits))) > 3 * Z_MAX


def test_trajectory_layout_and_reproducibility() -> None:
    mdps = MDPTensors.from_mdps(sample_mdps(np.random.default_rng(0), 5, 10, 5))
    policy = table_policy(torch.zeros(10, 5))
    a = sample_trajectories(policy, mdps, 7, 10, torch.Generator().manual_seed(1))
    b = sample_trajectories(policy, mdps, 7, 10, torch.Generator().manual_seed(1))
    c = sample_trajectories(policy, mdps, 7, 10, torch.Generator().manual_seed(2))
    for field in a._fields:
        assert getattr(a, field).shape == (10, 5, 7)
        torch.testing.assert_close(getattr(a, field), getattr(b, field), rtol=0, atol=0)
    assert not torch.equal(a.rewards, c.rewards)
    assert (a.states[0] == 0).all()  # episodes start in state 0
    torch.testing.assert_close(a.next_states[:-1], a.states[1:])
    assert a.episode_returns().shape == (5, 7)
    torch.testing.assert_close(a.task(3).rewards[:, 0], a.rewards[:, 3])


def test_sampler_is_generic_in_per_task_policies() -> None:
    """A policy with per-task parameters (as a vmap engine would supply) is honoured per task."""
    mdps = MDPTensors.from_mdps(sample_mdps(np.random.default_rng(0), 3, 10, 5))
    logits = torch.full((3, 10, 5), -1e4)
    for task, action in enumerate([0, 4, 2]):  # task i always takes one action
        logits[task, :, action] = 0.0
    traj = sample_trajectories(table_policy(logits), mdps, 50, 10, torch.Generator().manual_seed(0))
    for task, action in enumerate([0, 4, 2]):
        assert (traj.actions[:, task] == action).all()


def test_zero_probability_entries_are_never_drawn() -> None:
    """Inverse-CDF sampling must skip entries of probability exactly 0, also the first one."""
    transitions = np.zeros((3, 2, 3))
    transitions[:, :, 2] = 1.0
    task = TabularMDP(transitions, np.zeros((3, 2)))
    logits = torch.tensor([[-1e30, 0.0]] * 3)  # probability exactly 0 after softmax
    traj = sample_trajectories(
        table_policy(logits), MDPTensors.from_mdps(task), 2000, 5, torch.Generator().manual_seed(0)
    )
    assert (traj.actions == 1).all()
    assert (traj.next_states == 2).all()


def test_sampler_rejects_bad_sizes() -> None:
    mdps = MDPTensors.from_mdps(sample_mdps(np.random.default_rng(0), 1, 3, 2))
    policy = table_policy(torch.zeros(3, 2))
    with pytest.raises(
        ValueError, match="horizon \\(episode length\\) must be an integer >= 1, got 0"
    ):
        sample_trajectories(policy, mdps, 4, 0, torch.Generator())
    with pytest.raises(ValueError, match="num_trajectories must be an integer >= 1, got 0"):
        sample_trajectories(policy, mdps, 0, 4, torch.Generator())


def test_a_diverged_policy_gets_nan_rewards_in_its_own_task_only() -> None:
    mdps = MDPTensors.from_mdps(sample_mdps(np.random.default_rng(0), 3, 4, 2))
    logits = torch.zeros(3, 4, 2)
    logits[1, 2, 0] = torch.nan
    traj = sample_trajectories(table_policy(logits), mdps, 5, 6, torch.Generator().manual_seed(0))
    returns = traj.episode_returns()
    assert torch.isnan(returns[1]).all()
    assert torch.isfinite(returns[[0, 2]]).all()


def test_one_batched_simulation_equals_task_by_task() -> None:
    """Task b's episodes depend only on its slice of the noise."""
    mdps = MDPTensors.from_mdps(sample_mdps(np.random.default_rng(0), 4, 10, 5))
    logits = torch.randn(4, 10, 5, generator=torch.Generator().manual_seed(1))
    noise = SamplingNoise.draw(torch.Generator().manual_seed(2), 10, 4, 7)
    together = simulate(table_policy(logits), mdps, noise)
    for b in range(4):
        alone = simulate(table_policy(logits[b : b + 1]), mdps.select(b), noise.task(b))
        for field in together._fields:
            torch.testing.assert_close(getattr(alone, field), getattr(together.task(b), field))
