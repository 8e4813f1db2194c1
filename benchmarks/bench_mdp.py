"""The RL case of ``metaopt bench``: one outer iteration of the MAML-RL example's configuration.

TorchOpt's MAML-RL example (seeds/002): 40 tasks × 20 trajectories × 10 steps, one inner SGD step
at lr 0.1, A2C loss. metaopt's engines against the example's own pattern: for every task, step a
Gymnasium environment in Python, one (trajectory, step) at a time with a policy forward per step,
then a ``torchopt.MetaSGD`` step, fresh query trajectories the same way and a backward pass.

The gym loop draws its own random numbers, so its meta-gradient cannot equal metaopt's; the two
metaopt engines sample identical trajectories and are checked against each other.
Registered as the ``mdp`` entry of the ``metaopt.benchmarks`` entry-point group.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torchopt

from metaopt.tools.bench import Case, Gradient, clear_grads, gradients_of
from metaopt.training import build_algorithm
from metaopt.training.config import resolve_config
from rl.losses import a2c_loss, lambda_returns
from rl.policy import CategoricalMLPPolicy
from rl.tabular.env import TabularMDPEnv
from rl.tabular.family import MDPFamily
from rl.tabular.mdp import sample_mdps

__all__ = ["cases", "gym_loop_meta_gradient"]


def _gym_loss(
    policy: CategoricalMLPPolicy,
    env: TabularMDPEnv,
    generator: torch.Generator,
    episodes: int,
    horizon: int,
) -> torch.Tensor:
    """A2C loss of ``episodes`` episodes stepped one by one through the Gymnasium environment."""
    obs = np.zeros((horizon, episodes, env.num_states), dtype=np.float32)
    next_obs = np.zeros_like(obs)
    actions = np.zeros((horizon, episodes), dtype=np.int64)
    rewards = np.zeros((horizon, episodes), dtype=np.float32)
    with torch.no_grad():
        for e in range(episodes):
            ob, _ = env.reset()
            for t in range(horizon):
                logits, _ = policy(torch.from_numpy(ob))
                action = int(torch.multinomial(torch.softmax(logits, -1), 1, generator=generator))
                following, reward, _, _, _ = env.step(action)
                obs[t, e], next_obs[t, e] = ob, following
                actions[t, e], rewards[t, e] = action, reward
                ob = following
    logits, values = policy(torch.from_numpy(obs))
    _, next_values = policy(torch.from_numpy(next_obs))
    returns = lambda_returns(torch.from_numpy(rewards), next_values.detach(), 0.99, 0.95)
    return a2c_loss(logits, torch.from_numpy(actions), values, returns, 0.5)


def gym_loop_meta_gradient(
    policy: CategoricalMLPPolicy,
    env: TabularMDPEnv,
    rng: np.random.Generator,
    generator: torch.Generator,
    tasks: int,
    episodes: int,
    horizon: int,
) -> Gradient:
    """One meta-iteration's meta-gradient the way TorchOpt's example computes it."""
    inner = torchopt.MetaSGD(policy, lr=0.1)
    params = list(policy.parameters())
    clear_grads(params)
    for task in sample_mdps(rng, tasks):
        env.reset_task(task)
        policy_state = torchopt.extract_state_dict(policy)
        inner_state = torchopt.extract_state_dict(inner)
        inner.step(_gym_loss(policy, env, generator, episodes, horizon))
        (_gym_loss(policy, env, generator, episodes, horizon) / tasks).backward()
        torchopt.recover_state_dict(policy, policy_state)
        torchopt.recover_state_dict(inner, inner_state)
    return gradients_of(params)


def cases(quick: bool) -> list[Case]:
    """The seed configuration (quick: 4 tasks × 5 trajectories)."""
    tasks, episodes = (4, 5) if quick else (40, 20)
    family = MDPFamily()
    config = resolve_config(family, {"algo": "maml", "meta_batch": tasks, "trajectories": episodes})

    def metaopt_impl(engine: str) -> Callable[[], Gradient]:
        torch.manual_seed(0)
        algo = build_algorithm(config, family.make_model(config))
        algo.engine = engine
        params = algo.meta_parameters()

        def run() -> Gradient:
            clear_grads(params)
            batch = family.sample_tasks(config, np.random.default_rng(0), tasks)  # same each call
            algo.meta_backward(batch if engine == "vmap" else list(batch))
            return gradients_of(params)

        return run

    torch.manual_seed(0)
    policy = family.make_model(config)
    env = TabularMDPEnv(config.num_states, config.num_actions, max_episode_steps=config.horizon)
    env.reset(seed=0)
    rng, generator = np.random.default_rng(0), torch.Generator().manual_seed(0)

    def gym_impl() -> Gradient:
        return gym_loop_meta_gradient(policy, env, rng, generator, tasks, episodes, config.horizon)

    return [
        Case(
            "mdp-maml-seed",
            {
                "metaopt-vmap": metaopt_impl("vmap"),
                "metaopt-loop": metaopt_impl("loop"),
                "gym-torchopt-loop": gym_impl,
            },
            max_repeats=3,
            stochastic=("gym-torchopt-loop",),
            ratios_to=("gym-torchopt-loop",),
            reference="metaopt-loop",
            tolerance=1e-5,
            description=f"MAML-RL, one outer iteration: {tasks} tasks × {episodes} trajectories × "
            f"{config.horizon} steps, 1 inner SGD step at lr 0.1, A2C loss",
        )
    ]
