"""The configuration every task family shares: `TrainConfig`, one command-line flag per field, and
`option`, the field that documents itself as a flag. A family's config subclasses `TrainConfig`
([`TaskFamily`][metaopt.training.TaskFamily] names it); this module imports neither torch nor
numpy, so the command line reads every family's flags without them.

The chosen algorithm's own options (iMAML's ``--reg``, Meta-SGD's ``--positive-rates``) are not
fields of the run: ``algo_options`` nests them under the algorithm's name, as its options
dataclass gives them (`metaopt.registry`), and ``config.json`` records them so.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from metaopt.options import (
    BATCH_NORM_MODES,
    ENGINES,
    HELP_FROM_BASE,
    INNER_OPTIMIZERS,
    PRECISIONS,
    ConfigError,
    check_bool,
    check_choice,
    check_device,
    check_int,
    check_real,
    flag,
    option,
)
from metaopt.registry import AlgorithmDefaults, algorithm, algorithms

__all__ = [
    "DIST_BACKENDS",
    "FLAT_OPTIONS",
    "MAX_SEED",
    "OUTER_OPTIMIZERS",
    "OUTER_SCHEDULES",
    "TrainConfig",
    "complete_options",
    "option",
]

#: Largest ``--seed`` / ``--eval-seed`` (numpy's legacy global seeding takes 32 bits).
MAX_SEED = 2**32 - 1

#: ``--outer-optimizer``: the ``torch.optim`` optimiser of the outer step (a config class may
#: offer more: ``trpo``, a trust-region step, where its family implements
#: `TaskFamily.trust_region`).
OUTER_OPTIMIZERS = ("adam", "sgd")

#: ``--outer-schedule``: the outer rate constant, annealed linearly to 0, or cosine-annealed to
#: ``--outer-lr-min`` (`metaopt.training.build.outer_schedule`).
OUTER_SCHEDULES = ("constant", "linear", "cosine")

#: ``--dist-backend``: ``auto`` picks nccl when the run computes on CUDA (``--device``), else gloo.
DIST_BACKENDS = ("auto", "gloo", "nccl")

#: The algorithms' options that ``config.json`` held at its top level, beside the run's fields,
#: until metaopt 0.1.0; a saved config that has them is read with them nested (`TrainConfig.upgrade`).
FLAT_OPTIONS = (
    "positive_rates",
    "reg",
    "cg_steps",
    "cg_tol",
    "solver",
    "inner_tol",
    "power_iterations",
    "on_solve_failure",
    "curvature",
    "unroll_checkpoints",
)


def complete_options(algo_options: Mapping[str, Any], algo: str) -> dict[str, Any]:
    """``algo_options`` with an entry for ``algo`` and every entry of a known algorithm filled
    with its options' defaults (an entry with a name its options lack is left for `validate`)."""
    complete = {name: dict(values) for name, values in algo_options.items()}
    specs = algorithms()
    if algo in specs:
        complete.setdefault(algo, {})
    for name, values in complete.items():
        spec = specs.get(name)
        if spec is not None and set(values) <= set(spec.option_names()):
            complete[name] = {**dataclasses.asdict(spec.options()), **values}
    return complete


@dataclass
class TrainConfig:
    """Fields every task family shares. Families subclass this and override defaults."""

    algo: str = option("maml", "meta-learning algorithm")
    #: The options of the algorithms by name (``{"imaml": {"reg": 20.0, ...}}``): the chosen one's
    #: always, every field at its value (`complete_options`); ``metaopt compare`` keeps each
    #: compared method's. Not a flag: each option is one, under its algorithm's heading.
    algo_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    preset: str | None = option(None, "named preset of the family (sets several defaults)")
    inner_steps: int = option(1, "gradient steps of adaptation to each task's support set")
    inner_lr: float = option(
        0.01, "inner-loop learning rate (Meta-SGD: initial per-parameter rate)"
    )
    inner_optimizer: str = option(
        "sgd", "inner-loop optimiser: sgd or adam (MAML, Reptile and iMAML)"
    )
    adapt: str = option(
        "",
        "parameters the inner loop adapts, comma-separated names or submodule prefixes as "
        "model.named_parameters() gives them (the rest held at θ during adaptation and still "
        "meta-learned); anil: the model's head (ANIL): its last layer, or the submodules its "
        "anil_heads names (an RL policy's action and critic heads); default: all",
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
        False,
        "anneal the outer learning rate linearly to 0 (the Reptile demo's); the same as "
        "--outer-schedule linear",
    )
    outer_schedule: str = option(
        "constant",
        "outer learning-rate schedule over the run's iterations: constant, linear (to 0, as "
        "--anneal) or cosine (to --outer-lr-min; MAML++'s)",
    )
    outer_lr_min: float = option(
        0.0, "the outer learning rate that --outer-schedule cosine ends at (MAML++: 1e-5)"
    )
    first_order_until: int = option(
        0,
        "derivative-order annealing (MAML++): first-order meta-gradients for the first N "
        "iterations, second order after (0: second order throughout; maml and metasgd; fomaml "
        "stays first order)",
    )
    multi_step_loss: bool = option(
        False,
        "multi-step loss (MAML++): the outer loss is a weighted sum of the query losses after "
        "every inner step, the weights annealed towards the last step over --msl-iterations",
    )
    msl_iterations: int = option(
        1000,
        "with --multi-step-loss: iterations over which the step weights move from uniform to "
        "the last step's; the last step's loss alone after them",
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
    device: str = option(
        "auto",
        "where the model, the tasks and the optimiser's state live: auto (CUDA when present, "
        "else MPS, else the CPU; the device chosen is written into config.json as device_used), "
        "cpu, cuda, cuda:N or mps; under torchrun auto and cuda give each rank cuda:LOCAL_RANK; "
        "a checkpoint resumes and evaluates on another device (families that sample on the CPU, "
        "the RL ones, take auto, which resolves to cpu for them, or cpu)",
    )
    precision: str = option(
        "fp32",
        "fp32, or bf16 / fp16: the forward passes, inner and outer, under torch.autocast (fp16 "
        "with gradient scaling of the outer step) on the loop engine, which --engine auto then "
        "picks (autocast does not reach inside vmap); the supervised families (others: fp32)",
    )
    #: Whether the family puts its tasks on the run's device
    #: (`metaopt.training.device.run_device`), so that ``--device`` may name an accelerator.
    #: False: it samples and trains on the CPU, and ``--device`` takes ``auto`` (resolved to the
    #: CPU) or ``cpu``.
    ON_DEVICE: ClassVar[bool] = False
    #: The ``--precision`` values this family's config accepts (`PRECISIONS`).
    PRECISIONS: ClassVar[tuple[str, ...]] = ("fp32",)
    dist_backend: str = option(
        "auto",
        "under torchrun: torch.distributed backend, auto (nccl when --device is CUDA, else "
        "gloo), gloo or nccl",
    )
    dist_timeout: float = option(
        600.0, "under torchrun: seconds a rank waits for the others before all of them fail"
    )
    max_memory: float = option(
        0.0,
        "GiB one meta-iteration may need by metaopt's estimate before the size flags are refused "
        "(0: the memory available when the run starts)",
    )

    #: Defaults that depend on ``--algo`` (each algorithm's `AlgorithmSpec.defaults`, plug-ins
    #: included): applied over the dataclass's defaults and under a preset's values and the
    #: user's flags.
    ALGORITHM_DEFAULTS: ClassVar[Mapping[str, Mapping[str, Any]]] = AlgorithmDefaults()

    #: A family's renamed fields, old name -> new: a saved config or a flag with the old name is
    #: read as the new one (the flag with a warning).
    RENAMED: ClassVar[Mapping[str, str]] = {}

    #: Fields that ``metaopt train FAMILY --resume RUN_DIR`` lets a flag change: they do not alter
    #: the training trajectory (``iterations`` only while the outer rate is constant, as a schedule
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
        "device",
    )

    def __post_init__(self) -> None:
        if isinstance(self.algo_options, Mapping) and isinstance(self.algo, str):
            self.algo_options = complete_options(self.algo_options, self.algo)

    def validate(self) -> None:
        """Raise [`ConfigError`][metaopt.training.ConfigError] naming the first field that is out of
        range."""
        spec = algorithm(self.algo)
        for name, allowed in (
            ("inner_optimizer", INNER_OPTIMIZERS),
            ("engine", ENGINES),
            ("batch_norm", BATCH_NORM_MODES),
            ("dist_backend", DIST_BACKENDS),
            ("outer_optimizer", self.OUTER_OPTIMIZERS),
            ("outer_schedule", OUTER_SCHEDULES),
        ):
            check_choice(flag(name), getattr(self, name), allowed)
        if self.inner_optimizer not in spec.inner_optimizers:
            raise ConfigError(
                f"--inner-optimizer must be {' or '.join(spec.inner_optimizers)} with --algo "
                f"{self.algo} ({spec.label} adapts with an inner update of its own); got "
                f"{self.inner_optimizer!r}"
            )
        self._check_device()
        for name in ("inner_steps", "meta_batch", "eval_tasks"):
            check_int(flag(name), getattr(self, name), 1)
        check_int(flag("msl_iterations"), self.msl_iterations, 1)
        for name in (
            "iterations",
            "eval_every",
            "checkpoint_every",
            "threads",
            "first_order_until",
        ):
            check_int(flag(name), getattr(self, name), 0)
        for name in ("seed", "eval_seed"):  # numpy's legacy seeding takes 32 bits
            check_int(flag(name), getattr(self, name), 0, MAX_SEED)
        for name in ("inner_lr", "outer_lr", "dist_timeout"):
            check_real(flag(name), getattr(self, name), low=0, low_open=True)
        for name in ("max_memory", "clip_grad_norm", "outer_lr_min"):
            check_real(flag(name), getattr(self, name), low=0)
        for name in ("anneal", "skip_nonfinite", "multi_step_loss"):
            check_bool(flag(name), getattr(self, name))
        if self.first_order_until and spec.outer != "query-gradient":
            raise ConfigError(
                f"--first-order-until applies to maml and metasgd (fomaml is first order "
                f"throughout and ignores it); --algo {self.algo} has no second-order "
                "meta-gradient to anneal towards"
            )
        if self.multi_step_loss and spec.outer != "query-gradient":
            raise ConfigError(
                f"--multi-step-loss applies to algorithms that differentiate the query loss after "
                f"the inner steps (maml, fomaml, metasgd); got --algo {self.algo}"
            )
        if self.multi_step_loss and self.engine == "compiled":
            raise ConfigError(
                "--multi-step-loss runs on the loop and vectorised engines; got --engine compiled "
                "(use auto, vmap or loop)"
            )
        if self.anneal and self.outer_schedule not in ("constant", "linear"):
            raise ConfigError(
                f"--anneal is --outer-schedule linear; it cannot be combined with "
                f"--outer-schedule {self.outer_schedule} (use --no-anneal)"
            )
        if self.outer_lr_min >= self.outer_lr and self.schedule == "cosine":
            raise ConfigError(
                f"--outer-lr-min must be below --outer-lr ({self.outer_lr!r}) for the cosine "
                f"schedule to anneal; got {self.outer_lr_min!r}"
            )
        if not isinstance(self.adapt, str):
            raise ConfigError(f"--adapt takes comma-separated names, got {self.adapt!r}")
        for name in ("preset", "out"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value):
                raise ConfigError(f"{flag(name)} must be a non-empty string, got {value!r}")
        if not isinstance(self.algo_options, Mapping):
            raise ConfigError(
                f"algo_options must map algorithms to options, got {self.algo_options!r}"
            )
        for name, values in self.algo_options.items():
            made = algorithm(name).make_options(values)
            check = getattr(made, "check", None)
            if name == self.algo and check is not None:
                check(self)

    def _check_device(self) -> None:
        """``--device`` spelled right and one the family can use; ``--precision`` one it has."""
        check_device(flag("device"), self.device)
        if not self.ON_DEVICE and self.device not in ("auto", "cpu"):
            raise ConfigError(
                f"--device must be auto or cpu for this family (it samples and trains on the "
                f"CPU; auto resolves to cpu); got {self.device!r}"
            )
        check_choice(flag("precision"), self.precision, PRECISIONS)
        if self.precision not in self.PRECISIONS:
            raise ConfigError(
                f"--precision must be {' or '.join(self.PRECISIONS)} for this family (it has no "
                f"mixed-precision path); got {self.precision!r}"
            )
        if self.precision != "fp32" and self.engine in ("vmap", "compiled"):
            raise ConfigError(
                f"--precision {self.precision} runs on the loop engine (--engine auto picks it): "
                "torch.autocast does not reach inside torch.func.vmap, on which the vectorised "
                f"and compiled engines run, so their passes would stay float32; got --engine "
                f"{self.engine}"
            )

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Give each ``option(default)`` without help the metadata of the base field it overrides.

        This runs before ``@dataclass`` reads the class, so ``dataclasses.fields`` still lists
        the base classes' fields.
        """
        super().__init_subclass__(**kwargs)
        base = {f.name: f for f in dataclasses.fields(cls)}
        for name, value in vars(cls).items():
            if isinstance(value, dataclasses.Field) and value.metadata.get(HELP_FROM_BASE):
                if name not in base:
                    raise TypeError(
                        f"{cls.__name__}.{name}: option() without help must override a field "
                        f"of a base config; give it a help text"
                    )
                value.metadata = base[name].metadata

    @property
    def schedule(self) -> str:
        """The outer learning-rate schedule that runs: ``outer_schedule``, or ``"linear"`` under
        ``anneal`` (its alias)."""
        return "linear" if self.anneal else self.outer_schedule

    @property
    def outer_step(self) -> str:
        """The outer optimiser that runs (a family's config may resolve a choice of its own)."""
        return self.outer_optimizer

    @property
    def options(self) -> Any:
        """The chosen algorithm's options: its options dataclass from ``algo_options[algo]``.

        Raises:
            ConfigError: an unknown algorithm, or options out of range.
        """
        return algorithm(self.algo).make_options(self.algo_options.get(self.algo, {}))

    @classmethod
    def upgrade(cls, saved: Mapping[str, Any]) -> dict[str, Any]:
        """A saved config (``config.json``'s or a checkpoint's) as this version reads it: renamed
        fields (`RENAMED`) under their new names, and the options that metaopt 0.1.0 kept at the
        top level (`FLAT_OPTIONS`) nested under the algorithm (another algorithm's dropped), each
        entry completed with its defaults."""
        values = dict(saved)
        for old, new in cls.RENAMED.items():
            if old in values and new not in values:
                values[new] = values.pop(old)
        own = {f.name for f in dataclasses.fields(cls)}
        flat = {n: values.pop(n) for n in FLAT_OPTIONS if n in values and n not in own}
        algo = values.get("algo", cls.algo)
        if "algo_options" not in values and isinstance(algo, str):
            spec = algorithms().get(algo)
            owned = spec.option_names() if spec is not None else ()
            values["algo_options"] = {algo: {k: v for k, v in flat.items() if k in owned}}
        if isinstance(values.get("algo_options"), Mapping) and isinstance(algo, str):
            values["algo_options"] = complete_options(values["algo_options"], algo)
        return values

    def to_dict(self) -> dict[str, Any]:
        """Every field by name, as ``config.json`` records it."""
        return dataclasses.asdict(self)

    def activation_elements(self) -> int:
        """Numbers one task holds per inner step besides the parameters (its data and the
        layers' outputs kept for the backward pass); the memory estimate's per-task term. A
        family's config says; 0 here (unknown: the estimate counts parameters alone)."""
        return 0
