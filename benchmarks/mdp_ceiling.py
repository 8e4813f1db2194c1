"""How much return the data of one support sample allows: a Bayesian planner, for context.

Not a meta-learning method. For each held-out task (the ``mdp`` family's evaluation tasks), draw
the same kind of data the inner loop gets — N episodes of the uniformly random policy — and act
optimally in the posterior-mean MDP: reward means from the conjugate N(1, 1) prior with unit
noise, transitions from the Dirichlet(1) prior updated by the observed counts, then
finite-horizon value iteration. The plan is scored exactly on the true task. The normalised score
of this planner says how much of the gap between the random and the optimal policy the support
data could close; gradient steps on a policy network close much less of it.

Usage:

    python -m benchmarks.mdp_ceiling                   # 1000 tasks, N = 20, 40, 100
    python -m benchmarks.mdp_ceiling --tasks 200 --episodes 10,20
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import numpy as np
import torch

from metaopt.options import ConfigError, check_int
from metaopt.training.config import add_dataclass_arguments, dataclass_from_arguments
from metaopt.training.family import option
from rl.tabular.family import MDPConfig, MDPFamily
from rl.tabular.mdp import TabularMDPBatch, optimal_q_values, optimal_return, random_policy_return
from rl.tabular.sampler import MDPTensors, sample_trajectories


def uniform_policy(num_actions: int):
    def policy(obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return obs.new_zeros(*obs.shape[:-1], num_actions), obs.new_zeros(obs.shape[:-1])

    return policy


def posterior_plan_returns(
    mdps: TabularMDPBatch, episodes: int, horizon: int, seed: int
) -> np.ndarray:
    """Exact return on each true task of the plan made in its posterior-mean MDP."""
    n, s, a = len(mdps), mdps.num_states, mdps.num_actions
    data = sample_trajectories(
        uniform_policy(a),
        MDPTensors.from_mdps(mdps),
        episodes,
        horizon,
        torch.Generator().manual_seed(seed),
    )
    states, actions, rewards, following = (x.numpy() for x in data)
    task = np.broadcast_to(np.arange(n)[None, :, None], states.shape)
    counts = np.zeros((n, s, a))
    reward_sums = np.zeros((n, s, a))
    next_counts = np.zeros((n, s, a, s))
    np.add.at(counts, (task, states, actions), 1)
    np.add.at(reward_sums, (task, states, actions), rewards)
    np.add.at(next_counts, (task, states, actions, following), 1)
    # Posterior means: R ~ N(1, 1) with unit noise; P(· | s, a) ~ Dirichlet(1 + counts).
    posterior = TabularMDPBatch(
        (1.0 + next_counts) / (s + counts[..., None]), (1.0 + reward_sums) / (1.0 + counts)
    )
    plan = optimal_q_values(posterior, horizon).argmax(-1)  # [H, N, S]
    # Exact value of the time-dependent plan on the true tasks, forward in time.
    d = np.zeros((n, s))
    d[:, 0] = 1.0
    total = np.zeros(n)
    rows = np.arange(n)[:, None]
    cols = np.arange(s)[None, :]
    for t in range(horizon):
        total += (d * mdps.reward_means[rows, cols, plan[t]]).sum(1)
        d = np.einsum("ns,nsp->np", d, mdps.transitions[rows, cols, plan[t]])
    return total


@dataclass
class CeilingOptions:
    """``python -m benchmarks.mdp_ceiling``'s flags."""

    tasks: int = option(1000, "held-out tasks of the mdp family scored (at least 2)")
    episodes: tuple[int, ...] = option(
        (20, 40, 100), "comma-separated numbers N of uniform-policy episodes the planner sees"
    )

    def validate(self) -> None:
        """Raise [`ConfigError`][metaopt.training.ConfigError] naming the flag, the value and what
        is allowed."""
        check_int("--tasks", self.tasks, 2, why=" (an interval needs two)")
        if not self.episodes:
            raise ConfigError("--episodes must name at least one number of episodes")
        for episodes in self.episodes:
            check_int("--episodes", episodes, 1)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_dataclass_arguments(parser, CeilingOptions)
    options = dataclass_from_arguments(CeilingOptions, vars(parser.parse_args(argv)))
    try:
        options.validate()
    except ConfigError as error:
        parser.error(str(error))  # one line, exit 2
    config = MDPConfig()
    mdps = MDPFamily().test_mdps(config, options.tasks)
    random = random_policy_return(mdps, config.horizon)
    optimal = optimal_return(mdps, config.horizon)
    for episodes in options.episodes:
        returns = posterior_plan_returns(mdps, episodes, config.horizon, seed=episodes)
        score = (returns - random) / (optimal - random)
        half = 1.96 * score.std(ddof=1) / np.sqrt(score.size)
        print(
            f"{episodes:4d} uniform-policy episodes: return {returns.mean():.2f}, "
            f"normalised score {score.mean():.3f} ± {half:.3f} ({options.tasks} tasks)"
        )


if __name__ == "__main__":
    main()
