"""Task families: how a domain plugs into the one meta-training loop and the ``metaopt`` command.

A task family is a class that says how to build the model, how to draw a meta-batch of tasks, how
to evaluate a trained model and what to plot. The core finds families through the Python
entry-point group ``metaopt.task_families`` (declared in a package's ``pyproject.toml``), so the
core never imports a domain, and a user's own family plugs in exactly like the built-in ones:

    [project.entry-points."metaopt.task_families"]
    mytask = "mypackage.family:MyFamily"

Configuration is a dataclass per family: [`TrainConfig`][metaopt.training.TrainConfig] holds the
fields every family shares; a family subclasses it, adds its own fields and changes defaults
(``option(default)`` alone keeps the base field's help). Every field becomes a command-line flag
(``inner_lr`` -> ``--inner-lr``); the help text is the field's ``metadata["help"]``. A family may
name presets (``--preset NAME``): field values applied on top of the defaults and below the flags
the user gives.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from metaopt.options import ALGORITHMS, ConfigError, flag
from metaopt.training.train_config import TrainConfig, option

# This module imports neither torch nor numpy: the command line reads every family's flags from
# it (and from the families' light configuration modules) without them.
if TYPE_CHECKING:
    import numpy as np
    from torch import nn

    from metaopt.task import Task
    from metaopt.training.distributed import DistInfo
    from metaopt.trust_region import TrustRegionProblem, TrustRegionSettings

# ALGORITHMS, ConfigError and flag live in the core, TrainConfig and option in train_config;
# they stay importable from here.
__all__ = [
    "ALGORITHMS",
    "ConfigError",
    "EvalRequest",
    "FamilyOptions",
    "RunResults",
    "TaskFamily",
    "TrainConfig",
    "TruthRequest",
    "flag",
    "option",
]


@dataclass(frozen=True)
class EvalRequest:
    """What a final evaluation covers; the loop asks for the defaults, ``metaopt eval
    --tasks/--steps`` for others ([`TaskFamily.evaluate`][metaopt.training.TaskFamily.evaluate]).

    Attributes:
        num_tasks: held-out tasks; ``None``: the config's ``eval_tasks``
            ([`tasks`][metaopt.training.EvalRequest.tasks]).
        steps: the adaptation step counts reported; ``None``: the family's own.
        group: the processes that share the evaluation under torchrun, as in
            [`TaskFamily.periodic_eval`][metaopt.training.TaskFamily.periodic_eval] (``None``: this
            one alone).
    """

    num_tasks: int | None = None
    steps: Sequence[int] | None = None
    group: DistInfo | None = None

    def tasks(self, config: TrainConfig) -> int:
        """The number of held-out tasks: ``num_tasks``, else ``config.eval_tasks``."""
        return config.eval_tasks if self.num_tasks is None else self.num_tasks

    def step_counts(self, default: Sequence[int]) -> list[int]:
        """The adaptation step counts reported: ``steps``, else the family's ``default``."""
        return list(default if self.steps is None else self.steps)


@dataclass(frozen=True)
class TruthRequest:
    """What ``metaopt compare`` asks of
    [`TaskFamily.compare_with_truth`][metaopt.training.TaskFamily.compare_with_truth].

    Attributes:
        methods: the compared algorithms, by name (`metaopt.registry.algorithm_names`).
        batches: meta-batches the comparison averages over.
        progress: called once per finished row (the command's progress bar).
    """

    methods: Sequence[str]
    batches: int
    progress: Callable[[], None]


@dataclass(frozen=True)
class RunResults:
    """What a finished run produced, drawn by [`TaskFamily.plot`][metaopt.training.TaskFamily.plot].

    Attributes:
        metrics: the rows of ``metrics.jsonl``, one per logged iteration.
        evaluation: the final evaluation, as written to ``eval.json``.
        tag: ``""`` for the run's own evaluation; for another one (``metaopt eval --tasks N
            --steps S``) what tells its files apart from the run's, ``"<N>-<S>"``: write each
            figure to ``path``, so that it does not replace the run's.
    """

    metrics: Sequence[Mapping[str, Any]]
    evaluation: Mapping[str, Any]
    tag: str = ""

    def path(self, run_dir: Path, name: str) -> Path:
        """Where figure ``name`` (``mse_vs_steps.png``) of this evaluation goes: ``run_dir /
        name``, with ``-<tag>`` before the suffix for a tagged one (``mse_vs_steps-1000-0,1.png``)."""
        stem, suffix = Path(name).stem, Path(name).suffix
        return Path(run_dir) / (f"{stem}-{self.tag}{suffix}" if self.tag else name)


@dataclass(frozen=True)
class FamilyOptions:
    """What the ``metaopt`` command shows of a family: its one-line description, its config
    dataclass (one flag per field) and its presets.

    A family declares one in a module that imports no torch, matplotlib or gymnasium, under the
    entry-point group ``metaopt.family_options`` with the family's name, and its
    [`TaskFamily`][metaopt.training.TaskFamily] takes the three attributes from it.
    ``metaopt --help``, ``metaopt train FAMILY --help`` and argument errors then answer without
    importing the family's module; a family without one is imported when its name is on the command
    line:

        [project.entry-points."metaopt.family_options"]
        mytask = "mypackage.config:MYTASK"

    ``requires``/``install``: the top-level module of an optional dependency and the command
    that installs it (`metaopt.training.registry.missing_requirement`).
    """

    description: str
    config_class: type[TrainConfig]
    presets: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)
    requires: str | None = None
    install: str = ""


class TaskFamily:
    """A domain's plug-in: subclass, set ``name`` and ``config_class``, implement the methods.

    The meta-training loop ([`metaopt.training.train`][metaopt.training.train]) calls, in order:
    ``make_model`` once, ``sample_tasks`` once per iteration, ``iteration_metrics`` after each
    ``meta_backward``, ``periodic_eval`` every ``eval_every`` iterations (and after the last one
    when ``selection_metric`` names one), then ``evaluate`` and ``plot`` at the end. ``metaopt
    eval RUN_DIR`` calls ``make_model`` and ``evaluate`` again.

    All randomness of training-task sampling must come from the ``rng`` handed in (a
    `numpy.random.Generator` owned by the loop, saved in checkpoints); evaluation draws its
    tasks from ``config.eval_seed`` alone, so every algorithm is scored on the same tasks.
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    config_class: ClassVar[type[TrainConfig]] = TrainConfig
    presets: ClassVar[Mapping[str, Mapping[str, Any]]] = {}
    #: metric name in eval.json: "mse", "accuracy" or "return"
    metric: ClassVar[str] = "loss"
    #: True when a larger metric is better (accuracy, return)
    higher_is_better: ClassVar[bool] = False

    def __init_subclass__(cls, options: FamilyOptions | None = None, **kwargs: Any) -> None:
        """``class Lines(TaskFamily, options=LINES)`` takes ``description``, ``config_class``
        and ``presets`` from the family's `FamilyOptions`, so they are written once."""
        super().__init_subclass__(**kwargs)
        if options is not None:
            cls.description = options.description
            cls.config_class = options.config_class
            cls.presets = options.presets

    def validate(self, config: TrainConfig) -> None:
        """Family-specific checks; raise [`ConfigError`][metaopt.training.ConfigError]. Called after
        ``config.validate()``."""

    def estimate_memory(self, config: TrainConfig) -> int | None:
        r"""Bytes one meta-iteration needs, roughly, or None when it cannot be told.

        The model is built on PyTorch's ``meta`` device (shapes only, nothing allocated) to count
        its P parameters; with A = ``config.activation_elements()`` and 4-byte floats,

        $$4\,[4P + B\,(K + 1)\,(2P + A)]$$

        for the parameters, their gradient and the outer optimiser's two moments (4P), and for
        each of the B tasks of the meta-batch, at each of the K inner steps and the query pass,
        a copy of the adapted parameters and their gradient kept for the backward pass plus the
        activations. This is what the vectorised engine holds at once (the loop engine holds one
        task's share at a time), so it errs on the high side. None when the model cannot be
        built on the ``meta`` device (one initialised from numpy data, say).
        """
        import torch  # here, not at the top: the command line imports this module without torch

        try:
            with torch.device("meta"):
                model = self.make_model(config)
        except Exception:  # a model built from data (numpy) cannot be built on "meta"
            return None
        params = sum(p.numel() for p in model.parameters())
        kept = config.inner_steps  # with --unroll-checkpoints N: N states and one step's graph
        checkpoints = getattr(config.options, "unroll_checkpoints", None)
        if checkpoints is not None:
            kept = min(kept, checkpoints + 1)
        per_task = (kept + 1) * (2 * params + config.activation_elements())
        return 4 * (4 * params + config.meta_batch * per_task)

    def make_model(self, config: TrainConfig) -> nn.Module:
        """The model whose initialisation is meta-learned (torch is seeded before the call)."""
        raise NotImplementedError

    def sample_tasks(
        self, config: TrainConfig, rng: np.random.Generator, num_tasks: int
    ) -> Sequence[Task]:
        """``num_tasks`` tasks drawn with ``rng`` (all randomness from it, so resume is exact);
        a ``BatchedTasks`` runs on the vectorised engine."""
        raise NotImplementedError

    def iteration_metrics(self, tasks: Sequence[Task]) -> dict[str, float]:
        """Extra per-iteration numbers read off the tasks just used (e.g. RL returns)."""
        return {}

    def progress_text(self, row: Mapping[str, Any]) -> str | None:
        """What a progress line says of one iteration's ``row`` of metrics.jsonl, when the
        support and query losses alone would not say what the numbers are (RL: the returns,
        and the losses named as surrogates). ``None``: the losses, as
        ``query 0.41, support 1.23 -> 0.51``."""
        return None

    def periodic_eval(
        self, algo: Any, config: TrainConfig, *, group: DistInfo | None = None
    ) -> dict[str, float]:
        """Cheap held-out evaluation logged every ``eval_every`` iterations.

        ``group``: the processes that share the evaluation under torchrun, for
        `metaopt.training.distributed.map_tasks` and ``on_main`` (``None``: this one alone).
        """
        return {}

    def selection_metric(self, config: TrainConfig) -> str | None:
        """The key of `periodic_eval`'s row that selects the run's best checkpoint
        (``best.pt``, `metaopt.training.selection`): a score on validation tasks that training
        and the final evaluation never draw from, larger is better when `higher_is_better`.

        ``None`` (the default): the family holds out no validation tasks, so the run keeps no
        best checkpoint and is evaluated with its last parameters.
        """
        return None

    def compare_with_truth(
        self, config: TrainConfig, request: TruthRequest
    ) -> dict[str, Any] | None:
        """For ``metaopt compare``: the methods' meta-gradients against an exact one, where the
        family can compute it, averaged over ``request.batches`` meta-batches; ``None`` (the
        default) where it cannot.

        Shape: ``{"setting": {...}, "rows": [{"method", "estimator", "cosine",
        "relative_error", "noise", "max_abs_z", "variance"}, ...], "not_applicable":
        {method: why}}``; ``request.progress()`` is called once per row.
        """
        return None

    def trust_region(
        self, algo: Any, config: TrainConfig, tasks: Sequence[Task]
    ) -> tuple[TrustRegionProblem, TrustRegionSettings]:
        """For ``--outer-optimizer trpo`` (offered by a config whose ``OUTER_OPTIMIZERS`` has
        it): the surrogate and divergence of the meta-batch ``tasks`` that ``meta_backward`` has
        just run on, and the step's settings (`metaopt.trust_region.trust_region_step`)."""
        raise NotImplementedError(f"the {self.name} family offers no trust-region outer step")

    def evaluate(
        self, algo: Any, config: TrainConfig, run_dir: Path, request: EvalRequest
    ) -> dict[str, Any]:
        """The final evaluation: the dict written to ``eval.json``, over what ``request`` asks.

        Shape: ``{"metric": ..., "tasks": n, "by_steps": {"0": {"mean": m, "ci95": c}, ...},
        "baseline": {"by_steps": {...}}}`` plus any extra keys.
        """
        raise NotImplementedError

    def plot(
        self, algo: Any, config: TrainConfig, run_dir: Path, results: RunResults
    ) -> list[Path]:
        """Family-specific figures (PNG) in ``run_dir`` from the run's ``results``; the loop draws
        the training curve itself."""
        return []
