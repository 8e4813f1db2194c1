"""The ``cheetah-vel-sampler`` case of ``metaopt bench``: one meta-batch's support sampling.

40 HalfCheetah-Vel tasks × 20 episodes × 100 steps (pytorch-maml-rl's ``halfcheetah-vel.yaml``;
``--quick``: 4 × 5 × 20), the 64-64 tanh Gaussian policy's forward included, sampled by:

* ``metaopt-threads1`` / ``metaopt-threads2``: `rl.cheetah.sampler.CheetahDynamics` under
  `rl.continuous.rollout` (one policy forward per step for every episode), its physics on one or
  two threads;
* ``gymnasium-sync``: ``gymnasium.vector.SyncVectorEnv`` of all the episodes' environments, one
  policy forward per step for all of them;
* ``gymnasium-async``: ``gymnasium.vector.AsyncVectorEnv``, one process per environment and as
  many environments as worker processes (`WORKERS`), the episodes in rounds;
* ``maml-rl-workers``: pytorch-maml-rl's pattern (its ``MultiTaskSampler``): `WORKERS` worker
  processes, each with its own copy of the policy, takes a task at a time and samples its
  episodes in a ``SyncVectorEnv``, one forward per step for that task's episodes.

Every row runs the same episodes (the same goals, start seeds and policy noise, the actions in
float64). The bench's agreement check compares the ``[H, T, N]`` rewards of metaopt's rows and
``gymnasium-sync``, whose policy forwards see the same batch (metaopt's rows hand the rewards
back in the policy's float32, the others in float64: a relative difference of about 1e-8). The
two multi-process rows forward fewer observations at once, which rounds float32 differently, and
over 100 steps the cheetah's dynamics amplify that (0.14 relative, measured): they are timed
but not compared. The records carry ``steps_per_second`` and ``cores`` (the threads or
processes a row computes on). Registered under the ``cheetah`` entry of ``metaopt.benchmarks``;
without MuJoCo there is no case.
"""

from __future__ import annotations

import importlib.util
import multiprocessing
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from metaopt.tools.bench import Case

__all__ = ["WORKERS", "cases", "make_env", "reference_policy", "vector_episodes"]

#: Processes of the ``gymnasium-async`` and ``maml-rl-workers`` rows.
WORKERS = 2

_TASK = "vel"


def reference_policy() -> torch.nn.Module:
    from rl.continuous import GaussianMLPPolicy

    torch.manual_seed(0)
    return GaussianMLPPolicy(17, 6, (64, 64), init_log_std=0.0, activation="tanh").eval()


def _actions(policy: torch.nn.Module, obs: np.ndarray, normal: torch.Tensor) -> np.ndarray:
    """float64 actions ``μ + σ ε`` for the float64 observations ``obs`` ``[..., 17]``."""
    mean, log_std, _ = policy(torch.from_numpy(obs).to(torch.float32))
    return (mean + log_std.exp() * normal).to(torch.float64).numpy()


def make_env(goal: float) -> Callable[[], Any]:
    def make() -> Any:
        import gymnasium as gym

        from rl.cheetah.env import ENV_IDS, register

        register()
        return gym.make(ENV_IDS[_TASK], goal=goal)

    return make


def vector_episodes(
    vector: Any, policy: torch.nn.Module, seeds: np.ndarray, normal: torch.Tensor
) -> np.ndarray:
    """Rewards ``[H, E]`` of one episode in each of ``vector``'s E environments."""
    obs, _ = vector.reset(seed=[int(s) for s in seeds])
    rewards = np.zeros((normal.shape[0], len(seeds)))
    with torch.no_grad():
        for step in range(normal.shape[0]):
            obs, rewards[step], _, _, _ = vector.step(_actions(policy, obs, normal[step]))
    return rewards


_WORKER: dict[str, Any] = {}


def _worker_start(state: dict[str, torch.Tensor], goals: np.ndarray, episodes: int) -> None:
    """A pytorch-maml-rl worker: its policy copy and one vector of ``episodes`` environments per
    task it may be handed (the task is set by the goal, as ``reset_task`` does there)."""
    import gymnasium as gym

    torch.set_num_threads(1)
    policy = reference_policy()
    policy.load_state_dict(state)
    envs = gym.vector.SyncVectorEnv([make_env(float(goals[0]))] * episodes)
    _WORKER.update(policy=policy, envs=envs, goals=goals)


def _worker_task(task: int, seeds: np.ndarray, normal: torch.Tensor) -> np.ndarray:
    envs = _WORKER["envs"]
    for env in envs.envs:
        env.unwrapped.reset_task(_WORKER["goals"][task])
    return vector_episodes(envs, _WORKER["policy"], seeds, normal)


def cases(quick: bool) -> list[Case]:
    """The sampler case at the reference settings (quick: 4 tasks × 5 episodes × 20 steps); none
    without MuJoCo."""
    if importlib.util.find_spec("mujoco") is None:
        return []
    import gymnasium as gym

    from rl.cheetah.env import sample_goals
    from rl.cheetah.sampler import CheetahDynamics, episode_seeds
    from rl.continuous import GaussianNoise, rollout

    tasks, episodes, horizon = (4, 5, 20) if quick else (40, 20, 100)
    rng = np.random.default_rng(0)
    goals, seeds = sample_goals(rng, _TASK, tasks), episode_seeds(rng, tasks, episodes)
    noise = GaussianNoise.draw(torch.Generator().manual_seed(0), horizon, tasks, episodes, 6)
    policy = reference_policy()
    flat_noise = noise.normal.reshape(horizon, tasks * episodes, 6)

    def metaopt_impl(threads: int) -> Callable[[], list[torch.Tensor]]:
        # Built once, as the vector environments: each rollout resets every simulation.
        dynamics = CheetahDynamics(_TASK, goals, seeds, dtype=torch.float32, threads=threads)

        def run() -> list[torch.Tensor]:
            return [rollout(policy, dynamics, noise).rewards.to(torch.float64)]

        return run

    every_goal = np.repeat(goals, episodes)
    sync = gym.vector.SyncVectorEnv([make_env(float(goal)) for goal in every_goal])

    def sync_impl() -> list[torch.Tensor]:
        rewards = vector_episodes(sync, policy, seeds.ravel(), flat_noise)
        return [torch.from_numpy(rewards.reshape(horizon, tasks, episodes))]

    per_round = min(WORKERS, tasks * episodes)
    rounds = [
        range(lo, min(lo + per_round, tasks * episodes))
        for lo in range(0, tasks * episodes, per_round)
    ]
    asynchronous = gym.vector.AsyncVectorEnv(
        [make_env(float(goals[0]))] * per_round, context="spawn"
    )

    def async_impl() -> list[torch.Tensor]:
        rewards = np.zeros((horizon, tasks * episodes))
        for members in rounds:
            chosen = list(members)
            if len(chosen) < per_round:  # the last round: fill with repeats, discarded
                chosen += [chosen[-1]] * (per_round - len(chosen))
            asynchronous.set_attr("goal", [float(g) for g in every_goal[chosen]])
            got = vector_episodes(
                asynchronous, policy, seeds.ravel()[chosen], flat_noise[:, chosen]
            )
            rewards[:, list(members)] = got[:, : len(members)]
        return [torch.from_numpy(rewards.reshape(horizon, tasks, episodes))]

    pool = multiprocessing.get_context("spawn").Pool(
        WORKERS, _worker_start, (policy.state_dict(), goals, episodes)
    )

    def workers_impl() -> list[torch.Tensor]:
        jobs = [
            pool.apply_async(_worker_task, (task, seeds[task], noise.normal[:, task]))
            for task in range(tasks)
        ]
        rewards = np.stack([job.get() for job in jobs], axis=1)
        return [torch.from_numpy(rewards)]

    steps = tasks * episodes * horizon
    return [
        Case(
            "cheetah-vel-sampler",
            {
                "metaopt-threads1": metaopt_impl(1),
                "metaopt-threads2": metaopt_impl(2),
                "gymnasium-sync": sync_impl,
                "gymnasium-async": async_impl,
                "maml-rl-workers": workers_impl,
            },
            reference="metaopt-threads1",
            tolerance=1e-6,
            description=f"HalfCheetah-Vel support sampling of one meta-batch: {tasks} tasks × "
            f"{episodes} episodes × {horizon} steps, 64-64 tanh Gaussian policy",
            ratios_to=("gymnasium-sync",),
            # Their policy forwards see fewer observations at once, which rounds float32
            # differently, and 100 HalfCheetah steps amplify that: timed, not compared.
            stochastic=("gymnasium-async", "maml-rl-workers"),
            max_repeats=3,
            steps=steps,
            cores={
                "metaopt-threads1": 1,
                "metaopt-threads2": 2,
                "gymnasium-sync": 1,
                "gymnasium-async": per_round,
                "maml-rl-workers": WORKERS,
            },
        )
    ]
