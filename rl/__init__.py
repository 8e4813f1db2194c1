"""Meta-reinforcement learning: the pieces every family shares, and one room per family.

Shared (this folder):

* `rl.config`: every family's settings (no torch: the command line reads them);
* `rl.sampling`: what every sampler shares (the policy signature, size checks, slicing episodes);
* `rl.policy`: the actor-critic MLP with a categorical head;
* `rl.continuous`: the Gaussian policy, `rollout` through a family's dynamics, their scoring;
* `rl.losses`: λ-returns / GAE and the A2C loss;
* `rl.estimators`: the meta-gradient estimators (``seed``, ``dice``, ``lvc``);
* `rl.task`: tasks implementing [`metaopt.task.Task`][metaopt.Task], for any family's sampler;
* `rl.trust_region`: MAML-TRPO's outer step;
* `rl.evaluation`, `rl.plots`: held-out returns and their figures;
* `rl.family`: `A2CFamily`, what every family shares; `rl.goal_family`: the goal-conditioned ones'.

Rooms, one per family (each imports the shared pieces, never another room):

* `rl.tabular`: random tabular MDPs (``metaopt train mdp``), their exact oracle;
* `rl.nav2d`: 2-D navigation (``metaopt train nav2d``);
* `rl.cheetah`: HalfCheetah velocity and direction (``cheetah-vel``, ``cheetah-dir``; MuJoCo).
"""

from typing import TYPE_CHECKING

from metaopt._lazy import lazy_exports

if TYPE_CHECKING:
    from rl.continuous import GaussianMLPPolicy
    from rl.losses import a2c_loss, lambda_returns
    from rl.policy import CategoricalMLPPolicy
    from rl.task import A2CSettings, RLTask, RLTaskBatch

# Imported on first use (metaopt._lazy): rl.config, which the command line reads for the
# families' flags, is a submodule of this package and must not import torch with it.
__getattr__ = lazy_exports(
    __name__,
    {
        "GaussianMLPPolicy": "rl.continuous",
        "a2c_loss": "rl.losses",
        "lambda_returns": "rl.losses",
        "CategoricalMLPPolicy": "rl.policy",
        "A2CSettings": "rl.task",
        "RLTask": "rl.task",
        "RLTaskBatch": "rl.task",
    },
)

__all__ = [
    "A2CSettings",
    "CategoricalMLPPolicy",
    "GaussianMLPPolicy",
    "RLTask",
    "RLTaskBatch",
    "a2c_loss",
    "lambda_returns",
]
