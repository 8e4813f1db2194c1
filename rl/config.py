"""Configuration of the RL families: the actor-critic fields they share, ``mdp``'s and ``nav2d``'s.

This module imports no torch (nor numpy or gymnasium): the ``metaopt`` command describes the
families' flags from it (the ``metaopt.family_options`` entry points ``MDP`` and ``NAV2D``), so
``metaopt train mdp --help`` answers without loading the families. The choices of the settings
that the torch modules implement live here: ``rl.estimators``, ``rl.continuous`` and
``rl.policy`` take them from this module.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from metaopt.options import check_choice
from metaopt.registry import algorithm
from metaopt.training.family import ConfigError, FamilyOptions, TrainConfig, flag, option

if TYPE_CHECKING:
    from metaopt.trust_region import TrustRegionSettings

__all__ = [
    "ACTIVATION_NAMES",
    "BASELINES",
    "ESTIMATORS",
    "MDP",
    "MDP_PRESETS",
    "NAV2D",
    "A2CConfig",
    "MDPConfig",
    "Nav2DConfig",
]

#: The meta-gradient estimators (``rl.estimators``), by their ``--meta-gradient`` names.
ESTIMATORS = ("seed", "dice", "lvc")

#: The advantage baselines ``rl.continuous.GaussianScorer`` offers (``--baseline``).
BASELINES = ("critic", "linear")

#: Hidden activations by name (``rl.policy.ACTIVATIONS`` maps them to modules).
ACTIVATION_NAMES = ("relu", "tanh")


@dataclass
class A2CConfig(TrainConfig):
    """Settings every actor-critic meta-RL family shares (the ``mdp`` family's defaults)."""

    inner_lr: float = option(0.1)
    meta_batch: int = option(40)
    threads: int = option(
        1, "torch intra-op threads (0: torch's default); tiny models run fastest on 1"
    )
    iterations: int = option(500)
    eval_every: int = option(
        50, "evaluate on the held-out test tasks every N iterations (0: never)"
    )
    eval_tasks: int = option(1000)
    horizon: int = option(10, "steps per episode (episodes are truncated, values bootstrap)")
    trajectories: int = option(20, "episodes sampled per task for each loss")
    gamma: float = option(0.99, "discount γ of the λ-returns")
    gae_lambda: float = option(0.95, "λ of the λ-returns / GAE (0: one-step TD, 1: Monte Carlo)")
    value_coef: float = option(0.5, "weight of the squared-advantage (critic) term of the A2C loss")
    entropy_coef: float = option(0.0, "weight of the entropy bonus of the A2C loss")
    meta_gradient: str = option(
        "dice",
        "meta-gradient estimator: dice (unbiased: policy-gradient query loss with DiCE's term for "
        "the support sampling), seed (TorchOpt's example: A2C losses, no sampling term; "
        "--preset seed) or lvc (ProMP's low-variance curvature)",
    )
    hidden_sizes: tuple[int, ...] = option((32, 32), "hidden-layer widths of the policy's torso")
    shared_torso: bool = option(
        True,
        "policy and value heads share one torso (as TorchOpt's MAML-RL example); "
        "--no-shared-torso: one each",
    )
    test_tasks: int = option(200, "held-out tasks of the periodic evaluation (from eval_seed)")

    def activation_elements(self) -> int:
        """Two losses (support and query) over ``trajectories`` episodes of ``horizon`` steps,
        each step with its observation, action, reward, value and two numbers per hidden unit
        (pre- and post-activation, policy and critic)."""
        steps = 2 * self.trajectories * self.horizon
        return steps * (8 + 4 * sum(self.hidden_sizes))

    def validate(self) -> None:
        super().validate()
        if algorithm(self.algo).reevaluates_support:  # iMAML's solve: one fixed support loss
            raise ConfigError(
                f"--algo {self.algo} is not available for RL families: its meta-gradient "
                "re-evaluates the support loss, which samples new trajectories at every call, so "
                "what it solves or differentiates would change under it"
            )
        if self.multi_step_loss:  # a query loss per inner step: new trajectories at each
            raise ConfigError(
                "--multi-step-loss is not available for RL families: a query loss after every "
                "inner step would sample new query trajectories at each step"
            )
        if getattr(self.options, "unroll_checkpoints", None) is not None:  # recomputes them
            raise ConfigError(
                "--unroll-checkpoints is not available for RL families: the backward pass "
                "recomputes the inner steps' support losses, which sample new trajectories at "
                "every call"
            )
        for name in ("horizon", "trajectories", "test_tasks"):
            _check_int(name, getattr(self, name), 1)
        for name in ("gamma", "gae_lambda"):
            _check_real(name, getattr(self, name), 0.0, 1.0)
        for name in ("value_coef", "entropy_coef"):
            _check_real(name, getattr(self, name), 0.0, None)
        if self.meta_gradient not in ESTIMATORS:
            raise ConfigError(
                f"--meta-gradient must be one of {', '.join(ESTIMATORS)}; got {self.meta_gradient!r}"
            )
        if not isinstance(self.hidden_sizes, tuple) or not all(
            isinstance(h, int) and not isinstance(h, bool) and h >= 1 for h in self.hidden_sizes
        ):
            raise ConfigError(
                f"--hidden-sizes must be comma-separated integers >= 1, got {self.hidden_sizes!r}"
            )


@dataclass
class MDPConfig(A2CConfig):
    """``metaopt train mdp`` settings; the hyper-parameters are those of TorchOpt's MAML-RL
    example, the estimator is ``dice``."""

    meta_batch: int = option(40, "tasks (MDPs) per meta-iteration")
    num_states: int = option(10, "states S of each random MDP")
    num_actions: int = option(5, "actions A of each random MDP")

    def validate(self) -> None:
        super().validate()
        for name in ("num_states", "num_actions"):
            _check_int(name, getattr(self, name), 1)


def _check_int(name: str, value: object, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(f"{flag(name)} must be an integer >= {low}, got {value!r}")


def _check_real(name: str, value: object, low: float, high: float | None) -> None:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and low <= value and (high is None or value <= high)  # type: ignore[operator]
    if not ok:
        allowed = f"in [{low:g}, {high:g}]" if high is not None else f"a finite number >= {low:g}"
        raise ConfigError(f"{flag(name)} must be {allowed}, got {value!r}")


@dataclass
class Nav2DConfig(A2CConfig):
    """``metaopt train nav2d`` settings (the paper's where it gives them; see the module). The
    defaults it shares with the tabular family are the paper's too: 20 episodes per goal for each
    loss, an evaluation every 50 iterations."""

    meta_batch: int = option(20, "goals per meta-iteration (the paper's and pytorch-maml-rl's)")
    iterations: int = option(300, "meta-iterations (outer steps)")
    outer_lr: float = option(3e-3)
    anneal: bool = option(
        True,
        "anneal Adam's outer learning rate linearly to 0 (--no-anneal: constant; at 3e-3 the "
        "policy walks off the plane after about 270 iterations); under the trust region Adam "
        "moves only the critic, and with --value-coef 0 nothing",
    )
    eval_tasks: int = option(400, "held-out goals in the final evaluation")
    horizon: int = option(100, "steps per episode (the paper's 100)")
    gae_lambda: float = option(1.0)  # Monte Carlo returns, as pytorch-maml-rl
    meta_gradient: str = option(
        "seed",
        "meta-gradient estimator: seed (A2C losses with standardised advantages, no sampling "
        "term: pytorch-maml-rl's MAML-TRPO objective), dice (unbiased: policy-gradient query "
        "loss with DiCE's term for the support sampling) or lvc (ProMP's low-variance curvature)",
    )
    hidden_sizes: tuple[int, ...] = option((64, 64), "hidden-layer widths of policy and critic")
    activation: str = option(
        "relu", "hidden activation of policy and critic: relu (the paper's) or tanh"
    )
    shared_torso: bool = option(False, "policy and critic share one torso (default: one each)")
    test_tasks: int = option(100, "held-out goals of the periodic evaluation")
    init_log_std: float = option(
        -1.0,
        "initial log-standard-deviation of the Gaussian policy (σ ≈ 0.37; the speed limit is 0.1)",
    )
    normalize_advantages: bool = option(
        True, "standardise the A2C policy term's advantages per goal (--no-normalize-advantages)"
    )
    baseline: str = option(
        "linear",
        "what the advantages subtract: linear (a linear feature baseline fitted per goal to its "
        "episodes, pytorch-maml-rl's) or critic (the value head; give it a --value-coef)",
    )
    value_coef: float = option(
        0.0,
        "weight of the squared-advantage (critic) term of the A2C loss (0: the critic is not "
        "trained; the linear baseline does not use it)",
    )
    critic_time: bool = option(
        False,
        "the critic also sees the fraction of the episode elapsed (the returns-to-go shrink "
        "with the time left, which the position does not tell); needs --no-shared-torso",
    )
    pretrain_iterations: int = option(
        200, "A2C steps (Adam at --outer-lr) that make the pretrained baseline"
    )
    outer_optimizer: str = option(
        "auto",
        "outer optimiser: adam, sgd, trpo (MAML-TRPO, the paper's: a trust-region step of the "
        "policy's parameters, --max-kl, the critic's by Adam at --outer-lr) "
        "or auto (trpo where it applies: not for reptile, a --meta-gradient other than seed or "
        "--shared-torso, where it is adam)",
    )
    max_kl: float = option(0.01, "trpo: largest mean KL of the adapted policies one step may reach")
    trpo_cg_steps: int = option(
        10,
        "trpo: conjugate-gradient iterations of the step's direction (--cg-steps in metaopt "
        "0.1.0: still accepted, with a warning)",
    )
    cg_damping: float = option(1e-5, "trpo: damping added to the Fisher-vector products")
    line_search_steps: int = option(15, "trpo: backtracking line-search candidates tried at most")
    line_search_ratio: float = option(0.8, "trpo: each candidate step is this times the last")

    OUTER_OPTIMIZERS = ("auto", "adam", "sgd", "trpo")
    RESUMABLE = (*A2CConfig.RESUMABLE, "test_tasks", "pretrain_iterations")
    #: TRPO's conjugate gradients had the flag of iMAML's (``--cg-steps``) until metaopt 0.1.0.
    RENAMED = {"cg_steps": "trpo_cg_steps"}

    def validate(self) -> None:
        super().validate()
        _check_int("pretrain_iterations", self.pretrain_iterations, 0)
        _check_real("init_log_std", self.init_log_std, -10.0, 10.0)
        if self.critic_time and self.shared_torso:
            raise ConfigError(
                "--critic-time needs the critic's own torso: it cannot be used with --shared-torso"
            )
        _check_real("max_kl", self.max_kl, 1e-12, None)
        _check_real("cg_damping", self.cg_damping, 0.0, None)
        _check_int("trpo_cg_steps", self.trpo_cg_steps, 1)
        _check_int("line_search_steps", self.line_search_steps, 1)
        _check_real("line_search_ratio", self.line_search_ratio, 1e-6, 1 - 1e-6)
        if self.outer_optimizer == "trpo":
            refusal = self._trpo_refusal()
            if refusal is not None:
                raise ConfigError(f"--outer-optimizer trpo: {refusal}")
        for name, allowed in (("baseline", BASELINES), ("activation", ACTIVATION_NAMES)):
            check_choice(f"--{name}", getattr(self, name), allowed)

    def _trpo_refusal(self) -> str | None:
        """Why the trust-region step does not apply to these settings (``None``: it does)."""
        if not algorithm(self.algo).has_meta_objective:
            return f"--algo {self.algo} has no meta-objective to differentiate (use maml, fomaml or metasgd)"
        if self.meta_gradient != "seed":
            return (
                "it needs --meta-gradient seed (its line search re-scores the query episodes "
                f"with the A2C loss), got {self.meta_gradient!r}"
            )
        if self.shared_torso:
            return (
                "it needs --no-shared-torso (with one torso the critic's loss moves the "
                "policy's features outside the trust region)"
            )
        return None

    @property
    def outer_step(self) -> str:
        """``auto``: trpo where it applies, else adam."""
        if self.outer_optimizer != "auto":
            return self.outer_optimizer
        return "trpo" if self._trpo_refusal() is None else "adam"

    @property
    def schedule(self) -> str:
        """``constant`` under the trust region without a critic loss (``--value-coef 0``, the
        default): TRPO takes the policy's steps, and the outer rate's optimiser (which moves the
        critic alone) has no gradient to follow, so no schedule changes the run, and a resumed
        run may extend ``--iterations``. Otherwise `TrainConfig.schedule`."""
        if self.outer_step == "trpo" and self.value_coef == 0:
            return "constant"
        return super().schedule

    def trust_region_settings(self) -> TrustRegionSettings:
        from metaopt.trust_region import TrustRegionSettings  # torch, only once a run is built

        return TrustRegionSettings(
            self.max_kl,
            self.trpo_cg_steps,
            self.cg_damping,
            self.line_search_steps,
            self.line_search_ratio,
        )


#: Field values of the ``mdp`` family's presets, applied by ``--preset``.
MDP_PRESETS: dict[str, dict[str, Any]] = {
    # TorchOpt's MAML-RL example exactly: the default hyper-parameters with its estimator.
    "seed": {"meta_gradient": "seed"},
    # Chosen on a sweep of inner lr {0.1, 0.3, 0.5, 1}, inner steps {1, 2, 3} and
    # trajectories {20, 40} (docs/results.md), with the MAML-RL example's estimator: stable
    # for MAML, first-order MAML, Meta-SGD and Reptile.
    "tuned": {"inner_steps": 2, "inner_lr": 0.5, "meta_gradient": "seed"},
    # A tabular actor-critic (no hidden layer: logits and values are per-state tables), whose
    # inner SGD steps can be large without interference between states.
    "tabular": {
        "hidden_sizes": (),
        "inner_steps": 3,
        "inner_lr": 10.0,
        "meta_gradient": "seed",
    },
    # The best gradient-based configuration found (docs/results.md): the tabular
    # actor-critic adapted by ten inner steps of 20 episodes each, the dice estimator.
    "tabular10": {"hidden_sizes": (), "inner_steps": 10, "inner_lr": 10.0},
}


MDP = FamilyOptions(
    "meta-RL on random tabular MDPs (10 states, 5 actions; TorchOpt's MAML-RL setting)",
    MDPConfig,
    MDP_PRESETS,
)
NAV2D = FamilyOptions(
    "meta-RL 2-D navigation to a goal (MAML's continuous-control demo)", Nav2DConfig
)
