"""How far metaopt's HalfCheetah sampler is from its physics: microseconds per environment step of
`rl.cheetah.sampler.CheetahDynamics` under `rl.continuous.rollout` (policy forward included)
against ``mujoco.mj_step`` alone on as many ``MjData``, and against the bench's
``gymnasium-sync`` row (``SyncVectorEnv``, the same episodes), alternating, median of 5, one
thread. The last line is the ceiling of the ``cheetah-vel-sampler`` case's ratio: a sampler that
spent nothing but the physics (``HalfCheetah-v5``'s, bit for bit, as the replay check demands)
would be ``gymnasium-sync`` / ``mj_step alone`` times faster per core than ``gymnasium-sync``.

Run: ``python -m benchmarks.cheetah_physics_floor`` (needs ``pip install -e '.[mujoco]'``).
"""

from __future__ import annotations

import statistics
import time

import gymnasium as gym
import mujoco
import numpy as np
import torch

from benchmarks.bench_cheetah import make_env, reference_policy, vector_episodes
from rl.cheetah.env import sample_goals
from rl.cheetah.sampler import CheetahDynamics, episode_seeds
from rl.continuous import GaussianNoise, rollout

TASKS, EPISODES, HORIZON, REPEATS = 8, 20, 100, 5


def main() -> None:
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    goals, seeds = sample_goals(rng, "vel", TASKS), episode_seeds(rng, TASKS, EPISODES)
    dynamics = CheetahDynamics("vel", goals, seeds)
    policy = reference_policy()  # the bench's, for the sampler and the gymnasium-sync row alike
    noise = GaussianNoise.draw(torch.Generator().manual_seed(0), HORIZON, TASKS, EPISODES, 6)
    model = dynamics.model
    datas = [mujoco.MjData(model) for _ in range(TASKS * EPISODES)]

    def physics() -> None:
        for _ in range(HORIZON):
            for data in datas:
                mujoco.mj_step(model, data, 5)

    goal_of = np.repeat(goals, EPISODES)
    vector = gym.vector.SyncVectorEnv([make_env(float(goal)) for goal in goal_of])
    normal = noise.normal.reshape(HORIZON, TASKS * EPISODES, 6)

    def gymnasium_sync() -> None:
        vector_episodes(vector, policy, seeds.reshape(-1), normal)

    timed = {
        "sampler": lambda: rollout(policy, dynamics, noise),
        "mj_step alone": physics,
        "gymnasium-sync": gymnasium_sync,
    }
    samples: dict[str, list[float]] = {name: [] for name in timed}
    for _ in range(REPEATS):
        for name, run in timed.items():
            start = time.perf_counter()
            run()
            seconds = time.perf_counter() - start
            samples[name].append(seconds / (TASKS * EPISODES * HORIZON) * 1e6)
    medians = {name: statistics.median(values) for name, values in samples.items()}
    for name, median in medians.items():
        print(f"{name:14s} {median:6.1f} µs per environment step")
    print(
        f"sampler: {medians['gymnasium-sync'] / medians['sampler']:.2f}× gymnasium-sync per core; "
        f"the physics alone: {medians['gymnasium-sync'] / medians['mj_step alone']:.2f}× (the "
        "ceiling of any sampler that steps HalfCheetah-v5's physics)"
    )


if __name__ == "__main__":
    main()
