"""Meta-reinforcement learning on random tabular MDPs (Duan et al. 2016's RL² distribution).

* `rl.mdp`: tasks as plain data, their distribution, exact random/optimal reference returns;
* `rl.env`: the Gymnasium environment ``TabularMDP-v0`` (registered by `register`);
* `rl.sampler`: vectorised trajectory sampling for a whole meta-batch;
* `rl.losses`: λ-returns / GAE and the A2C loss;
* `rl.policy`: the actor-critic MLP;
* `rl.task`: tasks implementing [`metaopt.task.Task`][metaopt.Task];
* `rl.family`: ``metaopt train mdp``.
"""

from typing import TYPE_CHECKING

from metaopt._lazy import lazy_exports

if TYPE_CHECKING:
    from rl.env import ENV_ID, TabularMDPEnv, register
    from rl.losses import a2c_loss, lambda_returns, trajectory_a2c_loss
    from rl.mdp import (
        TabularMDP,
        TabularMDPBatch,
        normalized_score,
        optimal_q_values,
        optimal_return,
        random_policy_return,
        sample_mdps,
    )
    from rl.policy import CategoricalMLPPolicy
    from rl.sampler import (
        MDPTensors,
        SamplingNoise,
        Trajectories,
        policy_table,
        sample_trajectories,
        simulate,
    )
    from rl.task import A2CSettings, MDPTask, MDPTaskBatch

# Imported on first use (metaopt._lazy): rl.config, which the command line reads for the
# families' flags, is a submodule of this package and must not import torch with it.
__getattr__ = lazy_exports(
    __name__,
    {
        "ENV_ID": "rl.env",
        "TabularMDPEnv": "rl.env",
        "register": "rl.env",
        "a2c_loss": "rl.losses",
        "lambda_returns": "rl.losses",
        "trajectory_a2c_loss": "rl.losses",
        "TabularMDP": "rl.mdp",
        "TabularMDPBatch": "rl.mdp",
        "normalized_score": "rl.mdp",
        "optimal_q_values": "rl.mdp",
        "optimal_return": "rl.mdp",
        "random_policy_return": "rl.mdp",
        "sample_mdps": "rl.mdp",
        "CategoricalMLPPolicy": "rl.policy",
        "MDPTensors": "rl.sampler",
        "SamplingNoise": "rl.sampler",
        "Trajectories": "rl.sampler",
        "policy_table": "rl.sampler",
        "sample_trajectories": "rl.sampler",
        "simulate": "rl.sampler",
        "A2CSettings": "rl.task",
        "MDPTask": "rl.task",
        "MDPTaskBatch": "rl.task",
    },
)

__all__ = [
    "ENV_ID",
    "A2CSettings",
    "CategoricalMLPPolicy",
    "MDPTask",
    "MDPTaskBatch",
    "MDPTensors",
    "SamplingNoise",
    "TabularMDP",
    "TabularMDPBatch",
    "TabularMDPEnv",
    "Trajectories",
    "a2c_loss",
    "lambda_returns",
    "normalized_score",
    "optimal_q_values",
    "optimal_return",
    "policy_table",
    "random_policy_return",
    "register",
    "sample_mdps",
    "sample_trajectories",
    "simulate",
    "trajectory_a2c_loss",
]
