"""How far metaopt's HalfCheetah sampler is from its physics: microseconds per environment step of
`rl.cheetah.sampler.CheetahDynamics` under `rl.continuous.rollout` (policy forward included)
against ``mujoco.mj_step`` alone on as many ``MjData``, alternating, median of 5, one thread.

Run: ``python -m benchmarks.cheetah_physics_floor`` (needs ``pip install -e '.[mujoco]'``).
"""

from __future__ import annotations

import statistics
import time

import mujoco
import numpy as np
import torch

from rl.cheetah.env import sample_goals
from rl.cheetah.sampler import CheetahDynamics, episode_seeds
from rl.continuous import GaussianMLPPolicy, GaussianNoise, rollout

TASKS, EPISODES, HORIZON, REPEATS = 8, 20, 100, 5


def main() -> None:
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    goals, seeds = sample_goals(rng, "vel", TASKS), episode_seeds(rng, TASKS, EPISODES)
    dynamics = CheetahDynamics("vel", goals, seeds)
    torch.manual_seed(0)
    policy = GaussianMLPPolicy(17, 6, (64, 64), 0.0, False, False, "tanh")
    noise = GaussianNoise.draw(torch.Generator().manual_seed(0), HORIZON, TASKS, EPISODES, 6)
    model = dynamics.model
    datas = [mujoco.MjData(model) for _ in range(TASKS * EPISODES)]

    def physics() -> None:
        for _ in range(HORIZON):
            for data in datas:
                mujoco.mj_step(model, data, 5)

    timed = {"sampler": lambda: rollout(policy, dynamics, noise), "mj_step alone": physics}
    samples: dict[str, list[float]] = {name: [] for name in timed}
    for _ in range(REPEATS):
        for name, run in timed.items():
            start = time.perf_counter()
            run()
            seconds = time.perf_counter() - start
            samples[name].append(seconds / (TASKS * EPISODES * HORIZON) * 1e6)
    for name, values in samples.items():
        print(f"{name:14s} {statistics.median(values):6.1f} µs per environment step")


if __name__ == "__main__":
    main()
