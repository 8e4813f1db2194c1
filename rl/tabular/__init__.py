"""Random tabular MDPs (Duan et al. 2016's RL² distribution): ``metaopt train mdp``.

* `rl.tabular.mdp`: tasks as plain data, their distribution, exact random/optimal reference returns;
* `rl.tabular.env`: the Gymnasium environment ``TabularMDP-v0`` (registered by `register`);
* `rl.tabular.sampler`: vectorised trajectory sampling for a whole meta-batch;
* `rl.tabular.losses`: the A2C loss of a policy on one-hot states, by lookup (`TabularScorer`);
* `rl.tabular.task`: `MDPTaskBatch`, the meta-batch for the core;
* `rl.tabular.family`: ``metaopt train mdp``;
* `rl.tabular.oracle`: exact returns and meta-objectives on tiny MDPs;
* `rl.tabular.truth`: the estimators against the exact meta-gradient (``metaopt compare mdp``).
"""

from typing import TYPE_CHECKING

from metaopt._lazy import lazy_exports

if TYPE_CHECKING:
    from rl.tabular.env import ENV_ID, TabularMDPEnv, register
    from rl.tabular.losses import trajectory_a2c_loss
    from rl.tabular.mdp import (
        TabularMDP,
        TabularMDPBatch,
        normalized_score,
        optimal_q_values,
        optimal_return,
        random_policy_return,
        sample_mdps,
    )
    from rl.tabular.sampler import (
        MDPTensors,
        SamplingNoise,
        Trajectories,
        policy_table,
        sample_trajectories,
        simulate,
    )
    from rl.tabular.task import MDPTask, MDPTaskBatch

# Imported on first use (metaopt._lazy), as the shared package's names are.
__getattr__ = lazy_exports(
    __name__,
    {
        "ENV_ID": "rl.tabular.env",
        "TabularMDPEnv": "rl.tabular.env",
        "register": "rl.tabular.env",
        "trajectory_a2c_loss": "rl.tabular.losses",
        "TabularMDP": "rl.tabular.mdp",
        "TabularMDPBatch": "rl.tabular.mdp",
        "normalized_score": "rl.tabular.mdp",
        "optimal_q_values": "rl.tabular.mdp",
        "optimal_return": "rl.tabular.mdp",
        "random_policy_return": "rl.tabular.mdp",
        "sample_mdps": "rl.tabular.mdp",
        "MDPTensors": "rl.tabular.sampler",
        "SamplingNoise": "rl.tabular.sampler",
        "Trajectories": "rl.tabular.sampler",
        "policy_table": "rl.tabular.sampler",
        "sample_trajectories": "rl.tabular.sampler",
        "simulate": "rl.tabular.sampler",
        "MDPTask": "rl.tabular.task",
        "MDPTaskBatch": "rl.tabular.task",
    },
)

__all__ = [
    "ENV_ID",
    "MDPTask",
    "MDPTaskBatch",
    "MDPTensors",
    "SamplingNoise",
    "TabularMDP",
    "TabularMDPBatch",
    "TabularMDPEnv",
    "Trajectories",
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
