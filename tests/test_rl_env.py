"""The TabularMDP-v0 environment and the task data: API conformance, seeding, validation."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import rl.tabular as rl
from rl.tabular.env import TabularMDPEnv
from rl.tabular.mdp import TabularMDP, TabularMDPBatch, sample_mdps


def deterministic_task(
    next_state: int, reward: float, states: int = 3, actions: int = 2
) -> TabularMDP:
    """Every (s, a) moves to ``next_state`` and pays mean ``reward``."""
    transitions = np.zeros((states, actions, states))
    transitions[:, :, next_state] = 1.0
    return TabularMDP(transitions, np.full((states, actions), reward))


def rollout(env: gym.Env, seed: int, actions: list[int]) -> list[tuple]:
    obs, _ = env.reset(seed=seed)
    out = [tuple(obs)]
    for a in actions:
        obs, reward, terminated, truncated, info = env.step(a)
        out.append((tuple(obs), reward, terminated, truncated, info["state"]))
    return out


def test_register_is_explicit_and_idempotent() -> None:
    rl.register()
    rl.register()
    assert rl.ENV_ID in gym.registry
    assert gym.registry[rl.ENV_ID].max_episode_steps == 10


def test_check_env_through_make_and_direct() -> None:
    rl.register()
    env = gym.make(rl.ENV_ID, num_states=10, num_actions=5, max_episode_steps=10)
    check_env(env.unwrapped)
    check_env(
        TabularMDPEnv(num_states=4, num_actions=3, max_episode_steps=5), skip_render_check=True
    )


@pytest.mark.parametrize("direct", [True, False])
def test_episode_structure_and_truncation(direct: bool) -> None:
    rl.register()
    task = sample_mdps(np.random.default_rng(0), 1, 6, 3)[0]
    if direct:
        env = TabularMDPEnv(6, 3, max_episode_steps=7, task=task)
    else:
        env = gym.make(rl.ENV_ID, num_states=6, num_actions=3, max_episode_steps=7, task=task)
    obs, info = env.reset(seed=3)
    np.testing.assert_array_equal(obs, np.eye(6, dtype=np.float32)[0])  # starts in state 0
    assert obs.dtype == np.float32 and info["state"] == 0
    for t in range(7):
        obs, reward, terminated, truncated, info = env.step(t % 3)
        assert obs[info["state"]] == 1.0 and obs.sum() == 1.0
        assert isinstance(reward, float)
        assert not terminated
        assert truncated == (t == 6)


def test_seeding_is_reproducible_and_seed_dependent() -> None:
    task = sample_mdps(np.random.default_rng(1), 1)[0]
    env = TabularMDPEnv(task=task, max_episode_steps=10)
    actions = [0, 1, 2, 3, 4, 0, 1, 2, 3, 4]
    first, again = rollout(env, 5, actions), rollout(env, 5, actions)
    assert first == again
    assert rollout(env, 6, actions) != first
    # sample_tasks draws from the environment's own generator, so it follows the reset seed too.
    env.reset(seed=11)
    a = env.sample_tasks(2)
    env.reset(seed=11)
    b = env.sample_tasks(2)
    np.testing.assert_array_equal(a[1].transitions, b[1].transitions)


def test_reset_task_switches_dynamics_and_rewards() -> None:
    env = TabularMDPEnv(num_states=3, num_actions=2, task=deterministic_task(1, 100.0))
    env.reset(seed=0)
    _, reward, _, _, info = env.step(0)
    assert info["state"] == 1 and reward > 90
    env.reset_task(deterministic_task(2, -100.0))
    _, reward, _, _, info = env.step(1)  # takes effect mid-episode, without a reset
    assert info["state"] == 2 and reward < -90


def test_reward_noise_has_unit_variance() -> None:
    env = TabularMDPEnv(num_states=3, num_actions=2, task=deterministic_task(0, 2.0))
    env.reset(seed=0)
    rewards = np.array([env.step(0)[1] for _ in range(4000)])
    # mean 2 and variance 1: the standard error of the mean is 1/sqrt(4000) = 0.016.
    assert abs(rewards.mean() - 2.0) < 5 / np.sqrt(4000)
    assert abs(rewards.var() - 1.0) < 5 * np.sqrt(2 / 4000)


def test_sampled_tasks_follow_the_rl2_distribution() -> None:
    batch = sample_mdps(np.random.default_rng(0), 2000, 10, 5)
    n = batch.reward_means.size
    assert abs(batch.reward_means.mean() - 1.0) < 5 / np.sqrt(n)
    assert abs(batch.reward_means.std() - 1.0) < 0.01
    # Dirichlet(1, ..., 1) over 10 states: each probability has mean 1/10 and variance
    # (1/10)(9/10)/11.
    p = batch.transitions
    np.testing.assert_allclose(p.sum(-1), 1.0, atol=1e-12)
    assert abs(p.mean() - 0.1) < 1e-3
    assert abs(p.var() - 0.9 / 110) < 2e-4


def test_batches_extend_prefix_stably() -> None:
    small = sample_mdps(np.random.default_rng(4), 3)
    large = sample_mdps(np.random.default_rng(4), 8)
    np.testing.assert_array_equal(small.transitions, large.transitions[:3])
    np.testing.assert_array_equal(small.reward_means, large.reward_means[:3])
    assert len(large[2:5]) == 3 and isinstance(large[0], TabularMDP)
    restacked = TabularMDPBatch.stack(list(small))
    np.testing.assert_array_equal(restacked.transitions, small.transitions)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_states": 0}, "num_states must be an integer >= 1, got 0"),
        ({"num_actions": 0}, "num_actions must be an integer >= 1, got 0"),
        ({"num_states": 2.5}, "num_states"),
        ({"max_episode_steps": 0}, "max_episode_steps (episode length) must be an integer >= 1"),
    ],
)
def test_env_rejects_bad_sizes(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        TabularMDPEnv(**kwargs)


def test_env_rejects_bad_actions_and_tasks() -> None:
    env = TabularMDPEnv(num_states=3, num_actions=2, task=deterministic_task(0, 1.0))
    env.reset(seed=0)
    with pytest.raises(ValueError, match="action must be an integer in \\[0, 2\\), got 2"):
        env.step(2)
    with pytest.raises(ValueError, match="task has 4 states and 2 actions"):
        env.reset_task(deterministic_task(0, 1.0, states=4))
    with pytest.raises(TypeError, match="task must be a TabularMDP"):
        env.reset_task({"transitions": None})


def good_arrays(states: int = 3, actions: int = 2) -> tuple[np.ndarray, np.ndarray]:
    task = deterministic_task(0, 1.0, states, actions)
    return task.transitions.copy(), task.reward_means.copy()


def test_task_validation_names_the_bad_value() -> None:
    transitions, rewards = good_arrays()
    bad = transitions.copy()
    bad[1, 0, 0] = 0.5
    with pytest.raises(ValueError, match=r"row at index \(1, 0\) sums to 0.5"):
        TabularMDP(bad, rewards)
    with pytest.raises(ValueError, match="transitions must have shape"):
        TabularMDP(transitions[:, :, :2], rewards)
    with pytest.raises(ValueError, match="transitions must have shape"):
        TabularMDP(transitions[0], rewards)
    with pytest.raises(ValueError, match="reward_means must have shape"):
        TabularMDP(transitions, rewards[:, :1])
    nan_rewards = rewards.copy()
    nan_rewards[2, 1] = np.nan
    with pytest.raises(ValueError, match=r"reward_means must be finite, got nan at index \(2, 1\)"):
        TabularMDP(transitions, nan_rewards)
    negative = transitions.copy()
    negative[0, 0, :2] = [1.5, -0.5]
    with pytest.raises(ValueError, match="probabilities >= 0, got -0.5"):
        TabularMDP(negative, rewards)
    with pytest.raises(ValueError, match="num_states must be an integer >= 1, got 0"):
        TabularMDP(np.zeros((0, 2, 0)), np.zeros((0, 2)))
    with pytest.raises(ValueError, match="num_actions must be an integer >= 1, got 0"):
        TabularMDP(np.zeros((3, 0, 3)), np.zeros((3, 0)))
    with pytest.raises(ValueError, match="transitions must have shape \\[N, S, A, S\\]"):
        TabularMDPBatch(transitions, rewards)


def test_sample_mdps_rejects_bad_sizes() -> None:
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="num_tasks must be an integer >= 1, got 0"):
        sample_mdps(rng, 0)
    with pytest.raises(ValueError, match="num_states must be an integer >= 1, got 0"):
        sample_mdps(rng, 2, num_states=0)
