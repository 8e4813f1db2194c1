"""Settings of ``cheetah-vel`` and ``cheetah-dir``: pytorch-maml-rl's ``halfcheetah-vel.yaml``.

This module imports no torch, gymnasium or MuJoCo (the ``metaopt.family_options`` entry points
``CHEETAH_VEL`` and ``CHEETAH_DIR`` are read by the command line, with or without the extra
installed). The reference settings: 40 tasks per meta-batch, 20 episodes of 100 steps per task,
a 64-64 tanh policy with a learned log-standard-deviation, one inner step at 0.1, γ = 0.99, GAE
λ = 1, the linear feature baseline and a TRPO outer step (max KL 0.01, 10 conjugate-gradient
iterations, damping 1e-5, 15 line-search steps at ratio 0.8), 500 meta-iterations.
"""

from __future__ import annotations

from dataclasses import dataclass

from metaopt.training.family import ConfigError, FamilyOptions, option
from rl.config import Nav2DConfig

__all__ = ["CHEETAH_DIR", "CHEETAH_VEL", "INSTALL", "CheetahConfig"]

#: The command that installs what the families need.
INSTALL = "pip install -e '.[mujoco]'"


@dataclass
class CheetahConfig(Nav2DConfig):
    """``metaopt train cheetah-vel`` / ``cheetah-dir`` settings (the reference settings)."""

    meta_batch: int = option(40, "goals per meta-iteration (pytorch-maml-rl's 40)")
    iterations: int = option(500, "meta-iterations (outer steps; pytorch-maml-rl's 500)")
    eval_tasks: int = option(100, "held-out goals in the final evaluation")
    horizon: int = option(100, "steps per episode (pytorch-maml-rl's 100)")
    hidden_sizes: tuple[int, ...] = option((64, 64), "hidden-layer widths of policy and critic")
    activation: str = option("tanh", "hidden activation of policy and critic: tanh or relu")
    init_log_std: float = option(
        0.0, "initial log-standard-deviation of the Gaussian policy (pytorch-maml-rl's σ = 1)"
    )
    test_tasks: int = option(40, "held-out goals of the periodic evaluation")
    anneal: bool = option(
        True, "anneal Adam's outer learning rate linearly to 0 (--no-anneal: constant)"
    )
    critic_time: bool = option(False, "not available for the HalfCheetah families")

    def validate(self) -> None:
        super().validate()
        if self.critic_time:
            raise ConfigError("--critic-time is not available for cheetah-vel and cheetah-dir")


CHEETAH_VEL = FamilyOptions(
    "meta-RL HalfCheetah running at a goal velocity in [0, 2] (MuJoCo; MAML's locomotion task)",
    CheetahConfig,
    requires="mujoco",
    install=INSTALL,
)
CHEETAH_DIR = FamilyOptions(
    "meta-RL HalfCheetah running forwards or backwards (MuJoCo; MAML's locomotion task)",
    CheetahConfig,
    requires="mujoco",
    install=INSTALL,
)
