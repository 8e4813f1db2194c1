"""The options of ``metaopt compare`` and the names its results use."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from metaopt.options import tuple_reader
from metaopt.registry import algorithm, algorithm_names, algorithms, color
from metaopt.training import ConfigError, option
from metaopt.training.family import flag

if TYPE_CHECKING:  # the command line reads CompareOptions without torch
    import torch

__all__ = [
    "BATCH_STREAM",
    "COLORS",
    "DEFAULT_STEPS",
    "HELDOUT_KEY",
    "HELDOUT_STREAM",
    "LABELS",
    "METASGD_RATES",
    "OTHER_BATCH",
    "OTHER_BATCH_STREAM",
    "REFERENCE",
    "CompareOptions",
    "ModelState",
    "gradient_rows",
    "parse_methods",
    "parse_steps",
    "rates_row",
]


#: The algorithm every other one is compared with.
REFERENCE = "maml"
#: Second-order MAML on an independent meta-batch: the meta-batch sampling noise.
OTHER_BATCH = "maml-other-batch"
#: A row of learned rates (`rates_row`) is named ``<method>-rates``.
RATES_SUFFIX = "-rates"
#: Meta-SGD's gradient row: the meta-gradient of its learned rates α, first-order Meta-SGD against
#: second-order Meta-SGD. At the comparison points α = inner_lr, where Meta-SGD's θ-gradient is
#: second-order MAML's exactly (tested), so a θ row against MAML could only read 1.0000 (×1).
METASGD_RATES = "metasgd" + RATES_SUFFIX
DEFAULT_STEPS = (1, 2, 5, 10)
#: Key of the domain-free held-out loss in learning curves (and in the runs' metrics.jsonl).
HELDOUT_KEY = "heldout_query_loss"


def rates_row(method: str) -> str:
    """The gradient row of ``method``'s learned rates (``metasgd-rates``): the methods whose rates
    start at ``inner_lr`` (``AlgorithmSpec.learned_rates``) are compared by their rates' meta-
    gradient, first against second order, as their θ-gradient there is second-order MAML's."""
    return method + RATES_SUFFIX


class _ByRow(Mapping[str, str]):
    """The label or colour (``what``) of each row of the results: an algorithm's from the registry
    (one without a colour gets one of a palette), its `rates_row`'s likewise, and ``rows``, the
    rows that are no algorithm's."""

    def __init__(self, what: str, rows: Mapping[str, str]) -> None:
        self._what = what
        self._rows = rows

    def __getitem__(self, row: str) -> str:
        if row in self._rows:
            return self._rows[row]
        specs = algorithms()
        method = row if row in specs else row.removesuffix(RATES_SUFFIX)
        if method not in specs:
            raise KeyError(row)
        if self._what == "color":
            return color(method)
        label = specs[method].label
        return label if method == row else f"{label}'s rates, first vs second order"

    def __iter__(self) -> Iterator[str]:
        specs = algorithms()
        rates = [rates_row(name) for name, spec in specs.items() if spec.learned_rates]
        return iter([*specs, *self._rows, *rates])

    def __len__(self) -> int:
        return len(list(iter(self)))


#: The label of each row of the results (an algorithm's from the registry).
LABELS: Mapping[str, str] = _ByRow("label", {OTHER_BATCH: "MAML, other batch"})
#: The colour of each row (an algorithm's own, else from a palette: never a KeyError).
COLORS: Mapping[str, str] = _ByRow("color", {OTHER_BATCH: "0.55"})


def gradient_rows(methods: Sequence[str]) -> list[str]:
    """The rows of the gradient comparison for ``methods``: each method but the reference
    against second-order MAML (a method with learned rates: its `rates_row` instead), then
    `OTHER_BATCH`."""
    rows = [rates_row(m) if algorithm(m).learned_rates else m for m in methods if m != REFERENCE]
    return [*rows, OTHER_BATCH]


# Streams apart from the training tasks (which come from default_rng(seed)): the compared
# meta-batches, the extra "other batch" of a one-batch comparison, and the held-out tasks.
OTHER_BATCH_STREAM = 0x0B47C4
BATCH_STREAM = 0xC0517E
HELDOUT_STREAM = 0x4E1D0

ModelState = dict[str, "torch.Tensor"]


#: ``--methods`` by default: every built-in algorithm but iMAML, whose λ has to suit the family
#: (its CG solve refuses an indefinite I + H/λ), so it is compared when named, as a plug-in's
#: algorithm is: ``--methods imaml``.
DEFAULT_METHODS = ("maml", "fomaml", "metasgd", "reptile")


def parse_methods(text: str) -> tuple[str, ...]:
    """``"fomaml,reptile"`` -> ``("fomaml", "reptile")`` (validated by `CompareOptions`)."""
    return tuple(part.strip() for part in text.split(",") if part.strip())


#: ``"1,2,5"`` -> ``(1, 2, 5)``; argparse reports the error of anything else.
parse_steps = tuple_reader(int)


@dataclass(frozen=True)
class CompareOptions:
    """What ``metaopt compare`` measures and how much it spends; the task flags are the config's.

    Each field is a flag of ``metaopt compare FAMILY`` (its metadata: the help, and how the flag
    reads; `metaopt.training.config.add_dataclass_arguments`).

    Attributes:
        methods: Algorithms compared with second-order MAML (which is always included).
        steps: Inner-step counts of the gradient and cost comparisons.
        checkpoints: Points of the second-order run, evenly spaced over ``config.iterations``,
            at which the gradients are compared again (0: at initialisation only).
        repeats: Timed meta-iterations per method and step count (after one warm-up).
        curve_every: Held-out evaluation every N iterations of those runs (0: about 20 points).
        heldout_tasks: Tasks of the domain-free held-out query loss.
        batches: Independent meta-batches the gradient comparison is averaged over.
        truth_batches: Batches of the comparison with the exact meta-gradient, for families
            that can compute one (``TaskFamily.compare_with_truth``); 0 skips it.
        curves: Run full meta-training for every method (otherwise only for MAML, and only when
            ``checkpoints`` needs it).
    """

    methods: tuple[str, ...] = option(
        DEFAULT_METHODS,
        "algorithms compared with second-order MAML, always included",
        metadata={"type": parse_methods, "metavar": "LIST"},
    )
    steps: tuple[int, ...] = option(
        DEFAULT_STEPS,
        "inner-step counts of the gradient and cost comparisons; --inner-steps sets the runs'",
        metadata={"type": parse_steps, "metavar": "LIST", "dest": "compare_steps"},
    )
    checkpoints: int = option(
        3,
        "points of the second-order run (evenly spaced over --iterations) at which the "
        "gradients are compared again; 0: at initialisation only",
        metadata={"metavar": "N"},
    )
    repeats: int = option(
        5, "timed meta-iterations per method and step count", metadata={"metavar": "N"}
    )
    curve_every: int = option(
        0,
        "held-out evaluation every N iterations of the runs (0: about 20 points)",
        metadata={"metavar": "N"},
    )
    heldout_tasks: int = option(50, "tasks of the held-out query loss", metadata={"metavar": "N"})
    batches: int = option(
        4,
        "independent meta-batches the gradient comparison is averaged over",
        metadata={"metavar": "N"},
    )
    truth_batches: int = option(
        20,
        "batches of the comparison with the exact meta-gradient, where the family has one "
        "(mdp); 0 skips it, otherwise at least 2",
        metadata={"metavar": "N"},
    )
    curves: bool = option(
        True,
        "skip the other methods' full runs (the second-order run still gives checkpoints)",
        metadata={"flag": "--no-curves"},
    )

    def validate(self) -> None:
        """Raise [`ConfigError`][metaopt.training.ConfigError] naming the first flag that is out of
        range."""
        names = algorithm_names()
        unknown = [m for m in self.methods if m not in names]
        if unknown or not self.methods:
            raise ConfigError(
                f"--methods must be a comma-separated subset of {', '.join(names)}; "
                f"got {','.join(self.methods)!r}"
            )
        if not self.steps or any(isinstance(s, bool) or s < 1 for s in self.steps):
            raise ConfigError(f"--steps must be integers >= 1, got {list(self.steps)}")
        for name, low in (
            ("checkpoints", 0),
            ("repeats", 1),
            ("curve_every", 0),
            ("batches", 1),
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ConfigError(f"{flag(name)} must be an integer >= {low}, got {value!r}")
        truth = self.truth_batches  # one bound: 0, or at least 2
        if not isinstance(truth, int) or isinstance(truth, bool) or (truth != 0 and truth < 2):
            raise ConfigError(
                "--truth-batches must be 0 (skip the comparison) or an integer >= 2 (its "
                f"standard error needs two batches), got {truth!r}"
            )
        if self.heldout_tasks < 1:
            raise ConfigError(f"--heldout-tasks must be an integer >= 1, got {self.heldout_tasks}")

    @property
    def all_methods(self) -> tuple[str, ...]:
        """Second-order MAML first, then the others in the registry's order."""
        chosen = set(self.methods) | {REFERENCE}
        return tuple(m for m in algorithm_names() if m in chosen)
