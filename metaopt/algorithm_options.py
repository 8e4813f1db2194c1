"""The built-in algorithms' options and factories, as `metaopt.registry` registers them.

An algorithm's options are a frozen dataclass whose fields become flags of ``metaopt train``
(``reg`` -> ``--reg``, the help from `metaopt.options.option`), shown under the algorithm's own
heading of ``--help`` and nested under the algorithm in ``config.json``. Besides its fields an
options class may define

* ``validate(self)``: the fields' own ranges, raising [`ConfigError`][metaopt.ConfigError] with the
  flag's name (run even where the flag is refused, so that a value out of range says so first);
* ``check(self, config)``: agreement with the run's config (its ``engine``, ``inner_optimizer``);
* ``inner_lr_is_cap``: ``True`` where ``--inner-lr`` only bounds a step the algorithm chooses
  itself (iMAML tied to the curvature), so no plain SGD step is the one it was trained for.

A field's metadata may say, under ``applies``, what the flag applies to, for the message that
refuses it with another ``--algo``.

A factory builds the learner: ``factory(model, *, inner_lr, inner_steps, inner_optimizer, engine,
batch_norm, adapt, **options)``. The built-in ones wrap today's classes; they import torch when
called, never when this module is imported (the command line reads the options without torch).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from metaopt.options import (
    CURVATURES,
    SOLVE_FAILURE_POLICIES,
    SOLVERS,
    ConfigError,
    check_bool,
    check_choice,
    check_int,
    check_real,
    option,
)

if TYPE_CHECKING:
    from torch import nn

    from metaopt.algorithms import MetaLearner

__all__ = [
    "FirstOrderMAMLOptions",
    "IMAMLOptions",
    "MAMLOptions",
    "MetaSGDOptions",
    "NoOptions",
    "UnrollOptions",
    "first_order_maml",
    "imaml",
    "maml",
    "metasgd",
    "reptile",
]


@dataclass(frozen=True)
class NoOptions:
    """The options of an algorithm that has none of its own (Reptile)."""


@dataclass(frozen=True)
class UnrollOptions:
    """Options of the algorithms that differentiate the query loss through the inner loop."""

    unroll_checkpoints: int | None = option(
        None,
        "maml and metasgd: checkpointed unrolling, at most this many inner states held at once and "
        "the others recomputed in the backward pass (memory bounded for long unrolls, for more "
        "time; vectorised engine); default: the plain unroll, every step kept",
        metadata={"applies": "the second-order unroll of --algo maml and metasgd"},
    )

    def validate(self) -> None:
        """``--unroll-checkpoints``: none, or an integer >= 1."""
        if self.unroll_checkpoints is not None:
            check_int("--unroll-checkpoints", self.unroll_checkpoints, 1)

    def check(self, config: Any) -> None:
        """Checkpointed unrolling recomputes on the vectorised engine alone."""
        if self.unroll_checkpoints is not None and config.engine not in ("auto", "vmap"):
            raise ConfigError(
                f"--unroll-checkpoints runs on the vectorised engine; got --engine {config.engine}"
                " (use auto or vmap)"
            )


@dataclass(frozen=True)
class MAMLOptions(UnrollOptions):
    """MAML's options: checkpointed unrolling, and MAML++'s learned per-step rates."""

    lslr: bool = option(
        False,
        "maml and fomaml: MAML++'s learned per-layer, per-step inner learning rates (one rate "
        "per parameter tensor and inner step, starting at --inner-lr, meta-learned; inner SGD)",
        metadata={"applies": "--algo maml and fomaml (Meta-SGD learns a rate per entry already)"},
    )

    def validate(self) -> None:
        """``--unroll-checkpoints`` as `UnrollOptions`; ``--lslr`` true or false."""
        super().validate()
        check_bool("--lslr", self.lslr)

    def check(self, config: Any) -> None:
        """`UnrollOptions`'; and learned per-step rates are inner SGD's."""
        super().check(config)
        if self.lslr and config.inner_optimizer != "sgd":
            raise ConfigError(
                f"--lslr learns the rates of inner SGD; got --inner-optimizer "
                f"{config.inner_optimizer} (use sgd)"
            )


@dataclass(frozen=True)
class FirstOrderMAMLOptions(MAMLOptions):
    """First-order MAML's: MAML's, of which checkpointed unrolling does not apply."""

    def check(self, config: Any) -> None:
        """First-order MAML keeps no graph of its inner steps to checkpoint."""
        if self.unroll_checkpoints is not None:
            raise ConfigError(
                "--unroll-checkpoints applies to the second-order unroll of --algo maml and "
                f"metasgd; --algo {config.algo} keeps no graph of its inner steps"
            )
        super().check(config)


@dataclass(frozen=True)
class MetaSGDOptions(UnrollOptions):
    """Meta-SGD's options: checkpointed unrolling, and how its learned rates are parameterised
    (no ``--lslr``: its rates are per entry already)."""

    positive_rates: bool = option(
        False,
        "Meta-SGD: learn ρ with rates α = softplus(ρ), which stay positive (default: the raw "
        "rates of Li et al., which may turn negative; a warning says when)",
        metadata={"applies": "--algo metasgd (its learned rates)"},
    )

    def validate(self) -> None:
        """`UnrollOptions`', and ``--positive-rates`` true or false."""
        super().validate()
        check_bool("--positive-rates", self.positive_rates)


@dataclass(frozen=True)
class IMAMLOptions:
    """iMAML's inner problem and linear solve (`metaopt.IMAML`, docs/algorithms.md)."""

    reg: float = option(1.0, "iMAML: λ, the pull of the inner problem towards θ")
    cg_steps: int = option(10, "iMAML: conjugate-gradient iterations per meta-gradient")
    cg_tol: float = option(
        1e-3, "iMAML: largest relative CG residual accepted (beyond it training stops)"
    )
    solver: str = option(
        "cg",
        "iMAML: linear solver of (I + H/λ)x = ∇L_query: cg (needs I + H/λ positive definite), "
        "minres (symmetric, possibly indefinite) or normal_cg (CG on the squared system)",
    )
    inner_tol: float = option(
        0.0,
        "iMAML: stop the inner loop once every task's ‖∇L(φ) + λ(φ − θ)‖ is at most this times "
        "its value at θ, or after --inner-steps steps (0: always --inner-steps steps)",
    )
    power_iterations: int = option(
        0,
        "iMAML: power iterations estimating each task's support-loss curvature L at θ; the inner "
        "step is then min(--inner-lr, 1/(λ + L)), halved where it raises the regularised loss "
        "(0: --inner-lr)",
    )
    inner_momentum: bool = option(
        False,
        "iMAML: Nesterov's acceleration of the inner steps on the regularised problem, restarted "
        "where a step raises its loss (needs --inner-optimizer sgd)",
    )
    on_solve_failure: str = option(
        "stop",
        "iMAML: a linear solve that misses --cg-tol: stop (training stops), skip (no outer step "
        "for that meta-batch, counted as solve_skipped) or damp (solve (I + H/λ + μI)x = g with "
        "the smallest μ of 0.001, 0.01, 0.1, 1, 10 that converges; μ logged as solve_damping)",
    )
    curvature: str = option(
        "hessian",
        "iMAML: H in (I + H/λ)x = g: hessian (the support loss's) or gauss-newton (its "
        "positive semi-definite Gauss-Newton part)",
    )

    def validate(self) -> None:
        """Each field in its range, naming its flag."""
        check_choice("--solver", self.solver, SOLVERS)
        check_choice("--on-solve-failure", self.on_solve_failure, SOLVE_FAILURE_POLICIES)
        check_choice("--curvature", self.curvature, CURVATURES)
        check_int("--cg-steps", self.cg_steps, 1)
        check_int("--power-iterations", self.power_iterations, 0)
        check_real("--reg", self.reg, low=0, low_open=True)
        check_real("--cg-tol", self.cg_tol, low=0, low_open=True)
        check_real("--inner-tol", self.inner_tol, low=0)
        check_bool("--inner-momentum", self.inner_momentum)

    def check(self, config: Any) -> None:
        """The inner solve needs inner SGD."""
        if config.inner_optimizer != "sgd":
            solve = (
                (self.inner_tol, f"--inner-tol {self.inner_tol}", "--inner-tol 0"),
                (
                    self.power_iterations,
                    f"--power-iterations {self.power_iterations}",
                    "--power-iterations 0",
                ),
                (self.inner_momentum, "--inner-momentum", "--no-inner-momentum"),
            )
            for value, given, off in solve:
                if value:
                    raise ConfigError(
                        f"{given} needs --inner-optimizer sgd (gradient descent on the "
                        f"regularised problem); got {config.inner_optimizer!r} (set {off} to "
                        "use it)"
                    )

    @property
    def inner_lr_is_cap(self) -> bool:
        """With power iterations the inner step is tied to the curvature, ``--inner-lr`` a cap."""
        return self.power_iterations > 0


# -- factories: factory(model, *, inner_lr, inner_steps, inner_optimizer, engine, batch_norm, adapt,
# **options) -> MetaLearner, around the public classes -------------------------------------------


def maml(model: nn.Module, **settings: Any) -> MetaLearner:
    """Second-order MAML (`metaopt.MAML`)."""
    from metaopt.algorithms import MAML

    return MAML(model, **settings)


def first_order_maml(model: nn.Module, **settings: Any) -> MetaLearner:
    """First-order MAML (`metaopt.MAML` with ``first_order=True``)."""
    from metaopt.algorithms import MAML

    return MAML(model, first_order=True, **settings)


def metasgd(model: nn.Module, *, inner_optimizer: str, **settings: Any) -> MetaLearner:
    """Meta-SGD (`metaopt.MetaSGD`), whose inner update is SGD with its learned rates (the
    registry admits ``inner_optimizer="sgd"`` alone)."""
    from metaopt.algorithms import MetaSGD

    if settings.pop("lslr", False):  # refused by its options' check; here for direct builds
        raise ValueError("lslr does not apply to Meta-SGD, which learns per-entry rates already")
    return MetaSGD(model, **settings)


def reptile(model: nn.Module, **settings: Any) -> MetaLearner:
    """Reptile (`metaopt.Reptile`)."""
    from metaopt.algorithms import Reptile

    return Reptile(model, **settings)


def imaml(model: nn.Module, **settings: Any) -> MetaLearner:
    """iMAML (`metaopt.IMAML`)."""
    from metaopt.algorithms import IMAML

    return IMAML(model, **settings)
