"""The configuration every task family shares: `TrainConfig`, one command-line flag per field, and
`option`, the field that documents itself as a flag. A family's config subclasses `TrainConfig`
([`TaskFamily`][metaopt.training.TaskFamily] names it); this module imports neither torch nor
numpy, so the command line reads every family's flags without them."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from metaopt.options import (
    ALGORITHMS,
    BATCH_NORM_MODES,
    CURVATURES,
    ENGINES,
    INNER_OPTIMIZERS,
    SOLVE_FAILURE_POLICIES,
    SOLVERS,
    ConfigError,
    check_choice,
    check_int,
    check_real,
    flag,
)

__all__ = ["DIST_BACKENDS", "MAX_SEED", "OUTER_OPTIMIZERS", "TrainConfig", "option"]

#: Largest ``--seed`` / ``--eval-seed`` (numpy's legacy global seeding takes 32 bits).
MAX_SEED = 2**32 - 1

#: ``--outer-optimizer``: the ``torch.optim`` optimiser of the outer step (a config class may
#: offer more: ``trpo``, a trust-region step, where its family implements
#: `TaskFamily.trust_region`).
OUTER_OPTIMIZERS = ("adam", "sgd")

#: ``--dist-backend``: ``auto`` picks nccl with CUDA, else gloo.
DIST_BACKENDS = ("auto", "gloo", "nccl")


#: Metadata of an `option` without help, until its config class gives it the base's help.
_HELP_FROM_BASE = "help_from_base"


def option(default: Any, help: str | None = None, **kwargs: Any) -> Any:
    """A dataclass field that documents itself as a command-line flag.

    Without ``help``, the field must override a base config's field (in a subclass of
    [`TrainConfig`][metaopt.training.TrainConfig] changing a default), with its help and metadata.
    """
    own = {"help": help} if help is not None else {_HELP_FROM_BASE: True}
    return field(default=default, metadata={**own, **kwargs.pop("metadata", {})}, **kwargs)


@dataclass
class TrainConfig:
    """Fields every task family shares. Families subclass this and override defaults."""

    algo: str = option("maml", f"meta-learning algorithm: {', '.join(ALGORITHMS)}")
    preset: str | None = option(None, "named preset of the family (sets several defaults)")
    inner_steps: int = option(1, "gradient steps of adaptation to each task's support set")
    inner_lr: float = option(
        0.01, "inner-loop learning rate (Meta-SGD: initial per-parameter rate)"
    )
    inner_optimizer: str = option(
        "sgd", "inner-loop optimiser: sgd or adam (MAML, Reptile and iMAML)"
    )
    positive_rates: bool = option(
        False,
        "Meta-SGD: learn ρ with rates α = softplus(ρ), which stay positive (default: the raw "
        "rates of Li et al., which may turn negative; a warning says when)",
    )
    adapt: str = option(
        "",
        "parameters the inner loop adapts, comma-separated names or submodule prefixes as "
        "model.named_parameters() gives them (the rest held at θ during adaptation and still "
        "meta-learned); anil: the model's last layer (ANIL); default: all",
    )
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
    on_solve_failure: str = option(
        "stop",
        "iMAML: a linear solve that misses --cg-tol: stop (training stops), skip (no outer step "
        "for that meta-batch, counted as solve_skipped) or damp (solve (I + H/λ + μI)x = g with "
        "the smallest μ of 0.001, 0.01, 0.1, 1, 10 that converges; μ logged as solve_damping)",
    )
    curvature: str = option(
        "hessian",
        "iMAML: H in (I + H/λ)x = g: hessian (the support loss's) or gauss-newton (its "
        "positive semi-definite Gauss-Newton part; vectorised engine only)",
    )
    unroll_checkpoints: int | None = option(
        None,
        "maml and metasgd: checkpointed unrolling, at most this many inner states held at once and "
        "the others recomputed in the backward pass (memory bounded for long unrolls, for more "
        "time; vectorised engine); default: the plain unroll, every step kept",
    )
    engine: str = option(
        "auto",
        "auto (vectorised when the tasks can be stacked), vmap, loop (one task at a time), or "
        "compiled (the vectorised meta-iteration torch.compile'd: a compile of tens of seconds "
        "first, then several times faster on small models)",
    )
    batch_norm: str = option(
        "running",
        "BatchNorm in adaptation: running (each layer as its train/eval mode says; running "
        "statistics updated during a task's adaptation and restored after it) or batch (every "
        "layer normalises with its own batch's statistics; running statistics untouched)",
    )
    meta_batch: int = option(25, "tasks per meta-iteration")
    iterations: int = option(1000, "meta-iterations (outer steps)")
    outer_lr: float = option(1e-3, "outer-loop learning rate (Reptile: initial step size ε)")
    outer_optimizer: str = option("adam", "outer optimiser: adam or sgd")
    #: The ``--outer-optimizer`` values this family's config accepts.
    OUTER_OPTIMIZERS: ClassVar[tuple[str, ...]] = OUTER_OPTIMIZERS
    anneal: bool = option(
        False, "anneal the outer learning rate linearly to 0 (the Reptile demo's)"
    )
    clip_grad_norm: float = option(
        0.0,
        "scale the meta-gradient down to this global L2 norm before each outer step when it is "
        "larger (0: no clipping); the norm before clipping is logged as grad_norm",
    )
    seed: int = option(0, "seed of the model's initialisation and of training-task sampling")
    eval_seed: int = option(12345, "seed of the held-out evaluation tasks (disjoint stream)")
    eval_tasks: int = option(600, "held-out tasks in the final evaluation")
    eval_every: int = option(
        0, "evaluate on held-out tasks every N iterations (0: only at the end)"
    )
    checkpoint_every: int = option(0, "save a checkpoint every N iterations (0: only at the end)")
    skip_nonfinite: bool = option(
        False,
        "skip a meta-batch whose loss or meta-gradient is NaN/inf (no outer step; counted in "
        "the metrics' 'skipped' column) instead of stopping",
    )
    out: str | None = option(None, "run directory (default: runs/<family>-<algo>-<time>)")
    threads: int = option(
        1,
        "torch intra-op threads (0: torch's default); meta-learning models are small, and "
        "one thread per process is the fastest on a machine others also use",
    )
    dist_backend: str = option(
        "auto",
        "under torchrun: torch.distributed backend, auto (nccl with CUDA, else gloo), gloo or nccl",
    )
    dist_timeout: float = option(
        600.0, "under torchrun: seconds a rank waits for the others before all of them fail"
    )
    max_memory: float = option(
        0.0,
        "GiB one meta-iteration may need by metaopt's estimate before the size flags are refused "
        "(0: the memory available when the run starts)",
    )

    #: Defaults that depend on ``--algo``: applied over the dataclass's defaults and under a
    #: preset's values and the user's flags. iMAML's solve its inner problem to a tolerance with
    #: a curvature-tied step and damp a solve that fails (docs/results.md measured them).
    ALGORITHM_DEFAULTS: ClassVar[Mapping[str, Mapping[str, Any]]] = {
        "imaml": {
            "inner_lr": 1.0,
            "inner_steps": 20,
            "inner_tol": 1e-2,
            "power_iterations": 3,
            "reg": 20.0,
            "cg_steps": 30,
            "on_solve_failure": "damp",
            "curvature": "gauss-newton",
        },
    }

    #: Fields that ``metaopt train FAMILY --resume RUN_DIR`` lets a flag change: they do not alter
    #: the training trajectory (``iterations`` only while ``anneal`` is off, as the schedule
    #: depends on it). A family may extend the tuple with harmless fields of its own.
    RESUMABLE: ClassVar[tuple[str, ...]] = (
        "iterations",
        "checkpoint_every",
        "eval_every",
        "eval_tasks",
        "skip_nonfinite",
        "dist_backend",
        "dist_timeout",
        "threads",
        "max_memory",
    )

    def validate(self) -> None:
        """Raise [`ConfigError`][metaopt.training.ConfigError] naming the first field that is out of
        range."""
        for name, allowed in (
            ("algo", ALGORITHMS),
            ("inner_optimizer", INNER_OPTIMIZERS),
            ("engine", ENGINES),
            ("batch_norm", BATCH_NORM_MODES),
            ("dist_backend", DIST_BACKENDS),
            ("outer_optimizer", self.OUTER_OPTIMIZERS),
            ("solver", SOLVERS),
            ("on_solve_failure", SOLVE_FAILURE_POLICIES),
            ("curvature", CURVATURES),
        ):
            check_choice(flag(name), getattr(self, name), allowed)
        if self.algo == "metasgd" and self.inner_optimizer != "sgd":
            raise ConfigError(
                f"--inner-optimizer must be sgd with --algo metasgd (Meta-SGD's inner update is "
                f"SGD with learned rates); got {self.inner_optimizer!r}"
            )
        if self.algo == "imaml" and self.curvature == "gauss-newton" and self.engine == "loop":
            raise ConfigError(
                "--curvature gauss-newton needs the network's outputs, which only the vectorised "
                "engine sees; got --engine loop (use --engine auto or vmap, or --curvature "
                "hessian)"
            )
        if self.algo == "imaml" and self.inner_optimizer != "sgd":
            for name in ("inner_tol", "power_iterations"):
                if getattr(self, name):
                    raise ConfigError(
                        f"{flag(name)} {getattr(self, name)} needs --inner-optimizer sgd (gradient "
                        f"descent on the regularised problem); got {self.inner_optimizer!r} (set "
                        f"{flag(name)} 0 to use it)"
                    )
        if self.positive_rates is True and self.algo != "metasgd":
            raise ConfigError(
                f"--positive-rates applies to --algo metasgd (its learned rates) only; got "
                f"--algo {self.algo}"
            )
        for name in ("inner_steps", "meta_batch", "eval_tasks", "cg_steps"):
            check_int(flag(name), getattr(self, name), 1)
        for name in ("iterations", "eval_every", "checkpoint_every", "threads", "power_iterations"):
            check_int(flag(name), getattr(self, name), 0)
        for name in ("seed", "eval_seed"):  # numpy's legacy seeding takes 32 bits
            check_int(flag(name), getattr(self, name), 0, MAX_SEED)
        for name in ("inner_lr", "outer_lr", "dist_timeout", "reg", "cg_tol"):
            check_real(flag(name), getattr(self, name), low=0, low_open=True)
        for name in ("max_memory", "clip_grad_norm", "inner_tol"):
            check_real(flag(name), getattr(self, name), low=0)
        for name in ("anneal", "skip_nonfinite", "positive_rates"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(
                    f"{flag(name)} must be true or false, got {getattr(self, name)!r}"
                )
        if self.unroll_checkpoints is not None:
            check_int(flag("unroll_checkpoints"), self.unroll_checkpoints, 1)
            if self.algo not in ("maml", "metasgd"):
                raise ConfigError(
                    f"--unroll-checkpoints applies to the second-order unroll of --algo maml and "
                    f"metasgd; --algo {self.algo} keeps no graph of its inner steps"
                )
            if self.engine not in ("auto", "vmap"):
                raise ConfigError(
                    f"--unroll-checkpoints runs on the vectorised engine; got --engine {self.engine}"
                    " (use auto or vmap)"
                )
        if not isinstance(self.adapt, str):
            raise ConfigError(f"--adapt takes comma-separated names, got {self.adapt!r}")
        for name in ("preset", "out"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value):
                raise ConfigError(f"{flag(name)} must be a non-empty string, got {value!r}")

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Give each ``option(default)`` without help the metadata of the base field it overrides.

        This runs before ``@dataclass`` reads the class, so ``dataclasses.fields`` still lists
        the base classes' fields.
        """
        super().__init_subclass__(**kwargs)
        base = {f.name: f for f in dataclasses.fields(cls)}
        for name, value in vars(cls).items():
            if isinstance(value, dataclasses.Field) and value.metadata.get(_HELP_FROM_BASE):
                if name not in base:
                    raise TypeError(
                        f"{cls.__name__}.{name}: option() without help must override a field "
                        f"of a base config; give it a help text"
                    )
                value.metadata = base[name].metadata

    @property
    def outer_step(self) -> str:
        """The outer optimiser that runs (a family's config may resolve a choice of its own)."""
        return self.outer_optimizer

    @property
    def first_order(self) -> bool:
        """Whether the algorithm drops second-order terms (``--algo fomaml``)."""
        return self.algo == "fomaml"

    def to_dict(self) -> dict[str, Any]:
        """Every field by name, as ``config.json`` records it."""
        return dataclasses.asdict(self)

    def activation_elements(self) -> int:
        """Numbers one task holds per inner step besides the parameters (its data and the
        layers' outputs kept for the backward pass); the memory estimate's per-task term. A
        family's config says; 0 here (unknown: the estimate counts parameters alone)."""
        return 0
