"""Configuration of the supervised families: the fields they share, and each family's own.

Their checks are `metaopt.options`. This module imports no torch: the ``metaopt`` command
describes the families' flags from it (the ``metaopt.family_options`` entry points).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

from metaopt.options import PRECISIONS, check_bool, check_choice, check_int, check_real, flag
from metaopt.registry import algorithm
from metaopt.training.family import ConfigError, FamilyOptions, TrainConfig, option

__all__ = [
    "ACTIVATION_NAMES",
    "CLASSIFY",
    "SINE",
    "ClassifyConfig",
    "SineConfig",
    "SupervisedConfig",
    "image_presets",
    "paper_presets",
]

#: Hidden activations by name (`supervised.models.ACTIVATIONS` maps them to modules).
ACTIVATION_NAMES = ("relu", "tanh")


def paper_presets() -> Any:
    """The ``preset`` field of a family whose presets are the two papers' settings."""
    return option("maml", "named preset: maml (Finn et al. 2017) or reptile (Nichol et al. 2018)")


def image_presets() -> Any:
    """The ``preset`` field of the image families: the two papers' settings and MAML++'s."""
    return option(
        "maml",
        "named preset: maml (Finn et al. 2017), reptile (Nichol et al. 2018) or mamlpp (MAML++, "
        "Antoniou et al. 2019: --lslr --per-step-bn --multi-step-loss --first-order-until "
        "--outer-schedule cosine)",
    )


@dataclass
class SupervisedConfig(TrainConfig):
    """Fields of the pretrained baseline that every supervised evaluation compares against.

    The baseline is the comparison Finn et al. (2017) draw for sine regression: the same network
    trained by ordinary supervised learning on tasks pooled together, then fine-tuned on each
    held-out task's support set exactly like the meta-learned model. It is trained when the run is
    evaluated, from ``baseline_seed``, and cached as ``baseline.pt`` in the run directory.
    """

    baseline_steps: int = option(
        2000, "Adam steps of the pretrained baseline (0: the untrained initialisation)"
    )
    baseline_lr: float = option(1e-3, "Adam learning rate of the pretrained baseline")
    baseline_tasks: int = option(25, "tasks pooled into each baseline training step")
    baseline_seed: int = option(0, "seed of the baseline's initialisation and training tasks")
    per_step_bn: bool = option(
        False,
        "MAML++'s per-step BatchNorm: every BatchNorm layer keeps its weight, bias and running "
        "statistics per inner step (maml, fomaml, metasgd; loop and vectorised engines)",
    )

    #: Fields that only say how a trained model is evaluated (or where the data lives): a
    #: family's own fields other than these are part of a cached baseline's key.
    EVALUATION_ONLY: ClassVar[tuple[str, ...]] = ()

    #: `SupervisedFamily` puts every batch on the run's device, and its losses take autocast.
    ON_DEVICE: ClassVar[bool] = True
    PRECISIONS: ClassVar[tuple[str, ...]] = PRECISIONS

    #: The baseline is trained at evaluation time, so its settings may change on ``--resume``.
    RESUMABLE: ClassVar[tuple[str, ...]] = (
        *TrainConfig.RESUMABLE,
        "baseline_steps",
        "baseline_lr",
        "baseline_tasks",
        "baseline_seed",
    )

    def validate(self) -> None:
        super().validate()
        check_int(flag("baseline_steps"), self.baseline_steps, 0)
        check_int(flag("baseline_tasks"), self.baseline_tasks, 1)
        check_int(flag("baseline_seed"), self.baseline_seed, 0)
        check_real(flag("baseline_lr"), self.baseline_lr, low=0, low_open=True)
        check_bool(flag("per_step_bn"), self.per_step_bn)
        if self.per_step_bn and algorithm(self.algo).outer != "query-gradient":
            raise ConfigError(
                f"--per-step-bn applies to maml, fomaml and metasgd (whose engines say which "
                f"inner step a forward runs at); got --algo {self.algo}"
            )
        if self.per_step_bn and self.engine == "compiled":
            raise ConfigError(
                "--per-step-bn runs on the loop and vectorised engines; got --engine compiled "
                "(use auto, vmap or loop)"
            )


@dataclass
class SineConfig(SupervisedConfig):
    """Sine regression; the defaults are the ``maml`` preset (Finn et al., 2017)."""

    preset: str | None = paper_presets()
    iterations: int = option(2000, "meta-iterations (MAML paper: 70000; see docs/supervised.md)")
    shots: int = option(10, "support points K per task")
    query: int = option(0, "query points per training task (0: same as --shots)")
    amp_min: float = option(0.1, "smallest amplitude A")
    amp_max: float = option(5.0, "largest amplitude A")
    phase_min: float = option(0.0, "smallest phase φ")
    phase_max: float = option(math.pi, "largest phase φ (MAML: π, Reptile seed: 2π)")
    x_min: float = option(-5.0, "left end of the input range")
    x_max: float = option(5.0, "right end of the input range")
    grid: int = option(0, "0: x ~ U[x-min, x-max]; n >= 2: x on the n-point grid (Reptile: 50)")
    minibatch: int = option(
        0, "support points per inner step, walking one shuffled epoch (0: all of them)"
    )
    hidden: int = option(40, "units per hidden layer")
    depth: int = option(2, "hidden layers")
    activation: str = option("relu", "hidden activation: relu or tanh")
    eval_shots: int = option(0, "support points of held-out tasks (0: same as --shots)")
    eval_query: int = option(
        100, "query points of held-out tasks, x ~ U[x-min, x-max] (with --grid: the grid)"
    )
    protocol_points: int = option(10, "10-point protocol: support points taken from the grid")
    protocol_steps: int = option(32, "10-point protocol: plain SGD steps")
    protocol_lr: float | None = option(
        None,
        "10-point protocol: plain SGD learning rate; default: the run's --inner-lr, the step "
        "it was meta-trained for, and no protocol for iMAML with --power-iterations > 0 (its "
        "--inner-lr is only a cap) (a fixed value, e.g. the Reptile demo's 0.02, compares runs "
        "but may diverge on a model trained for smaller steps)",
    )

    EVALUATION_ONLY: ClassVar[tuple[str, ...]] = (
        "eval_shots",
        "eval_query",
        "protocol_points",
        "protocol_steps",
        "protocol_lr",
    )
    RESUMABLE: ClassVar[tuple[str, ...]] = (*SupervisedConfig.RESUMABLE, *EVALUATION_ONLY)

    def activation_elements(self) -> int:
        """Support and query points, each with its input, target and two numbers per hidden
        unit (pre- and post-activation)."""
        points = self.shots + (self.query or self.shots)
        return points * (2 + 2 * self.hidden * self.depth)

    def validate(self) -> None:
        super().validate()
        for name in ("shots", "eval_query", "hidden", "protocol_points"):
            check_int(flag(name), getattr(self, name), 1)
        if self.grid != 0:  # one bound: 0, or a grid of at least two points
            check_int(flag("grid"), self.grid, 2, why=" (or 0: uniform x)")
        for name in ("query", "depth", "minibatch", "eval_shots", "protocol_steps"):
            check_int(flag(name), getattr(self, name), 0)
        for name in ("amp_min", "phase_min", "phase_max", "x_min", "x_max"):
            check_real(flag(name), getattr(self, name))
        check_real(flag("amp_min"), self.amp_min, low=0.0)
        check_real(flag("amp_max"), self.amp_max, low=self.amp_min)
        check_real(flag("phase_max"), self.phase_max, low=self.phase_min)
        check_real(flag("x_max"), self.x_max, low=self.x_min, low_open=True)
        if self.protocol_lr is not None:
            check_real(flag("protocol_lr"), self.protocol_lr, low=0.0, low_open=True)
        check_choice(flag("activation"), self.activation, ACTIVATION_NAMES)
        if self.grid:
            why = f" (the {flag('grid')} {self.grid} points of a task)"
            check_int(flag("shots"), self.shots, 1, self.grid, why)
            check_int(flag("eval_shots"), self.eval_shots, 0, self.grid, why)
        check_int(
            flag("protocol_points"),
            self.protocol_points,
            1,
            self.protocol_grid,
            f" (the {self.protocol_grid}-point grid)",
        )
        if self.minibatch and algorithm(self.algo).reevaluates_support:
            raise ConfigError(
                f"{flag('minibatch')} {self.minibatch} does not apply to --algo {self.algo}: its "
                "meta-gradient re-evaluates the whole support loss (iMAML: its Hessian), which a "
                f"task on the loop engine does not give; use {flag('minibatch')} 0"
            )

    @property
    def support_points_eval(self) -> int:
        """Support points of a held-out task."""
        return self.eval_shots or self.shots

    @property
    def protocol_step(self) -> float | None:
        """The 10-point protocol's SGD learning rate: ``protocol_lr``, else ``inner_lr``; ``None``
        (no protocol) for iMAML with a curvature-tied inner step (``power_iterations`` > 0),
        whose ``inner_lr`` is only a cap: no plain SGD step is the one it was trained for."""
        if self.protocol_lr is not None:
            return self.protocol_lr
        return None if getattr(self.options, "inner_lr_is_cap", False) else self.inner_lr

    @property
    def protocol_grid(self) -> int:
        """Points of the grid the 10-point protocol samples from and scores on."""
        return self.grid or 50


#: Field values of the two papers' settings, applied by ``--preset``.
SINE_PRESETS: dict[str, dict[str, Any]] = {
    "maml": {},
    "reptile": {
        "iterations": 30000,
        "phase_max": 2 * math.pi,
        "grid": 50,
        "shots": 50,
        "minibatch": 10,
        "hidden": 64,
        "depth": 2,
        "activation": "tanh",
        "algo": "reptile",
        "inner_lr": 0.02,
        "inner_steps": 5,
        "meta_batch": 1,
        "outer_optimizer": "sgd",
        "outer_lr": 0.1,
        "anneal": True,
        "eval_shots": 10,
    },
}


CLASSIFY_MODELS = ("mlp", "logistic")


@dataclass
class ClassifyConfig(SupervisedConfig):
    """Binary classification with random linear boundaries."""

    preset: str | None = option("maml", "named preset: maml")
    iterations: int = option(1000)
    inner_lr: float = option(0.1)
    dim: int = option(2, "input dimension d")
    shots: int = option(10, "labelled support points K per task")
    query: int = option(50, "query points per task")
    offset: float = option(1.0, "boundary offsets b ~ U[-offset, offset]")
    model: str = option("mlp", "mlp or logistic (a linear model)")
    hidden: int = option(40, "units per hidden layer of the MLP")
    depth: int = option(2, "hidden layers of the MLP")
    activation: str = option("relu", "hidden activation: relu or tanh")

    def activation_elements(self) -> int:
        """Support and query points, each with its inputs, label and two numbers per hidden
        unit (pre- and post-activation)."""
        return (self.shots + self.query) * (self.dim + 1 + 2 * sum(self.hidden_layers))

    def validate(self) -> None:
        super().validate()
        for name in ("dim", "shots", "query", "hidden"):
            check_int(flag(name), getattr(self, name), 1)
        check_int(flag("depth"), self.depth, 0)
        check_real(flag("offset"), self.offset, low=0.0)
        check_choice(flag("model"), self.model, CLASSIFY_MODELS)
        check_choice(flag("activation"), self.activation, ACTIVATION_NAMES)

    @property
    def hidden_layers(self) -> list[int]:
        return [] if self.model == "logistic" else [self.hidden] * self.depth


CLASSIFY_PRESETS: dict[str, dict[str, Any]] = {"maml": {}}


SINE = FamilyOptions(
    "sine-wave regression y = A·sin(x + φ) (MAML and Reptile papers)", SineConfig, SINE_PRESETS
)
CLASSIFY = FamilyOptions(
    "binary classification, a random linear decision boundary per task",
    ClassifyConfig,
    CLASSIFY_PRESETS,
)
