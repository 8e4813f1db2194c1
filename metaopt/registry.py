"""The algorithms by name: the built-in ones, the plug-ins of the entry-point group
``metaopt.algorithms``, and those registered in-process with `register_algorithm`.

Each is an `AlgorithmSpec`: its name (``--algo``), its label and colour in reports, its options
dataclass (each field a flag, `metaopt.algorithm_options` says what such a class may define),
the defaults it brings to the command line, what code outside the algorithms needs to know of it
(its capabilities, asked instead of its name), and the factory that builds its learner:

    factory(model, *, inner_lr, inner_steps, inner_optimizer, engine, batch_norm, adapt, **options)

``metaopt train FAMILY --algo NAME``, ``metaopt compare --methods NAME``, ``metaopt eval``,
``--resume``, torchrun and `metaopt.testing.check_meta_gradient` all find an algorithm here. A
package adds one with an entry point naming an `AlgorithmSpec`, a ``metaopt.rules.Rule`` subclass
(`rule_spec`: its name, label, colour and options come from the class) or a factory:

    [project.entry-points."metaopt.algorithms"]
    lslr = "mypackage.lslr:LSLR"

This module imports no torch (nor does loading the built-ins): the command line describes every
algorithm's flags from it. A plug-in whose module imports torch loads torch with the command line's
parser; for a quick ``--help``, name an `AlgorithmSpec` in a light module whose ``factory`` is the
text ``"module:function"`` of the heavy one, imported when a learner is built.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any

from metaopt import algorithm_options as builtin
from metaopt.options import ALGORITHM_LOOKS, ALGORITHMS, INNER_OPTIMIZERS, ConfigError

if TYPE_CHECKING:
    from torch import nn

    from metaopt.algorithms import MetaLearner

__all__ = [
    "ENTRY_POINT_GROUP",
    "LEARNER",
    "LEARNER_DEFAULTS",
    "OUTER_RULES",
    "AlgorithmDefaults",
    "AlgorithmSpec",
    "algorithm",
    "algorithm_names",
    "algorithms",
    "build_learner",
    "register_algorithm",
    "rule_learner",
    "rule_spec",
    "spec_of",
    "unregister_algorithm",
]

ENTRY_POINT_GROUP = "metaopt.algorithms"

#: How an algorithm turns adapted parameters into the meta-gradient, as `metaopt.rules.Rule.outer`
#: names it: ``query-gradient`` (the query loss differentiated back through the inner steps:
#: MAML, first-order MAML, Meta-SGD), ``implicit`` (the implicit function theorem at the inner
#: problem's solution: iMAML) or ``difference`` (θ − θ̃, no query loss: Reptile; it has no
#: meta-objective that a trust region or an exact meta-gradient could be compared with).
OUTER_RULES = ("query-gradient", "implicit", "difference")

#: The keywords every factory takes besides the model and the options, and the defaults of those
#: a caller of `AlgorithmSpec.build` may leave out (those of `metaopt.MetaLearner`).
LEARNER = ("inner_lr", "inner_steps", "inner_optimizer", "engine", "batch_norm", "adapt")
LEARNER_DEFAULTS: Mapping[str, Any] = {
    "inner_optimizer": "sgd",
    "engine": "auto",
    "batch_norm": "running",
    "adapt": None,
}

#: Colours of the algorithms that name none, in the order they are asked for (matplotlib's cycle
#: past the built-ins' C0-C4, then darker shades).
PALETTE = ("C5", "C6", "C7", "C8", "C9", "#4b0082", "#8b4513", "#2f4f4f", "#808000", "#000080")


@dataclass(frozen=True)
class AlgorithmSpec:
    """One algorithm as the rest of metaopt sees it.

    Attributes:
        name: Its ``--algo`` name (lower case, no spaces).
        factory: Builds the learner, ``factory(model, *, inner_lr, inner_steps, inner_optimizer,
            engine, batch_norm, adapt, **options) -> MetaLearner``; or the text
            ``"module:attribute"`` of one, imported when first called.
        label: Its name in reports and legends (default: ``name``).
        color: Its matplotlib colour in reports (default: one of a palette).
        options: The dataclass of its own options: each field a flag, its values handed to the
            factory (`metaopt.algorithm_options` lists the methods it may define).
        defaults: Values the command line uses with ``--algo NAME`` over the config's and the
            options' defaults, and under a preset's and the user's flags (iMAML's step and
            solve).
        outer: How its meta-gradient comes about: one of `OUTER_RULES`.
        exact: ``meta_backward`` gives the exact gradient of the meta-loss (finite differences
            can check it).
        learned_rates: It meta-learns inner learning rates that start at ``inner_lr``: where they
            do, its θ-gradient is MAML's, so ``metaopt compare`` compares its rates' meta-gradient,
            first against second order, instead.
        reevaluates_support: Its meta-gradient calls the support loss again after the inner loop
            (iMAML's Hessian at φ): a support loss that draws new data at every call (RL episodes,
            minibatches) would change under it.
        inner_optimizers: The ``--inner-optimizer`` values it takes.
    """

    name: str
    factory: Callable[..., MetaLearner] | str
    label: str = ""
    color: str | None = None
    options: type = builtin.NoOptions
    defaults: Mapping[str, Any] = field(default_factory=dict)
    outer: str = "query-gradient"
    exact: bool = False
    learned_rates: bool = False
    reevaluates_support: bool = False
    inner_optimizers: tuple[str, ...] = INNER_OPTIMIZERS

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name or self.name != self.name.strip():
            raise ValueError(f"an algorithm's name must be a non-empty word, got {self.name!r}")
        if not (callable(self.factory) or isinstance(self.factory, str)):
            raise TypeError(f"{self.name}: factory must be callable, got {self.factory!r}")
        if not dataclasses.is_dataclass(self.options):
            raise TypeError(f"{self.name}: options must be a dataclass, got {self.options!r}")
        reserved = sorted(set(LEARNER) & set(self.option_names()))
        if reserved:
            raise ValueError(f"{self.name}: an option may not be named {', '.join(reserved)}")
        if self.outer not in OUTER_RULES:
            raise ValueError(f"{self.name}: outer must be one of {', '.join(OUTER_RULES)}")
        if not self.label:
            object.__setattr__(self, "label", self.name)
        object.__setattr__(self, "defaults", dict(self.defaults))

    @property
    def has_meta_objective(self) -> bool:
        """Whether its meta-gradient is a gradient of the query loss (not Reptile's θ − θ̃)."""
        return self.outer != "difference"

    def option_names(self) -> tuple[str, ...]:
        """The fields of ``options``, in order."""
        return tuple(f.name for f in dataclasses.fields(self.options))

    def make_options(self, values: Mapping[str, Any]) -> Any:
        """``options`` from ``values`` (the others at their defaults), ranges validated.

        Raises:
            ConfigError: a name ``options`` lacks, or a value out of its range.
        """
        unknown = sorted(set(values) - set(self.option_names()))
        if unknown:
            raise ConfigError(f"--algo {self.name} has no option(s) {', '.join(unknown)}")
        made = self.options(**values)
        validate = getattr(made, "validate", None)
        if validate is not None:
            validate()
        return made

    def build(self, model: nn.Module, **settings: Any) -> MetaLearner:
        """The learner around ``model``.

        Args:
            model: The network θ parameterises.
            settings: ``inner_lr`` and ``inner_steps``; ``inner_optimizer``, ``engine``,
                ``batch_norm`` and ``adapt`` (`LEARNER_DEFAULTS` where not given); and fields of
                `options` (the others at their defaults).

        Raises:
            ConfigError: an option ``options`` lacks, or one out of its range.
        """
        missing = [name for name in ("inner_lr", "inner_steps") if name not in settings]
        if missing:
            raise TypeError(f"{self.name}: build() needs {' and '.join(missing)}")
        learner = {**LEARNER_DEFAULTS, **{k: settings.pop(k) for k in LEARNER if k in settings}}
        values = dataclasses.asdict(self.make_options(settings))
        factory = self.factory
        if isinstance(factory, str):
            module, _, attribute = factory.partition(":")
            factory = getattr(importlib.import_module(module), attribute)
        return factory(model, **learner, **values)


#: The built-in algorithms, in the order of `metaopt.options.ALGORITHMS`.
BUILTIN = {
    spec.name: spec
    for spec in (
        AlgorithmSpec(
            "maml",
            builtin.maml,
            *ALGORITHM_LOOKS["maml"],
            builtin.MAMLOptions,
            exact=True,
        ),
        AlgorithmSpec(
            "fomaml",
            builtin.first_order_maml,
            *ALGORITHM_LOOKS["fomaml"],
            builtin.FirstOrderMAMLOptions,
        ),
        AlgorithmSpec(
            "metasgd",
            builtin.metasgd,
            *ALGORITHM_LOOKS["metasgd"],
            builtin.MetaSGDOptions,
            exact=True,
            learned_rates=True,
            inner_optimizers=("sgd",),
        ),
        AlgorithmSpec("reptile", builtin.reptile, *ALGORITHM_LOOKS["reptile"], outer="difference"),
        AlgorithmSpec(
            "imaml",
            builtin.imaml,
            *ALGORITHM_LOOKS["imaml"],
            builtin.IMAMLOptions,
            # Its inner problem solved to a tolerance with a curvature-tied step, a failed solve
            # damped (docs/results.md measured them).
            defaults={
                "inner_lr": 1.0,
                "inner_steps": 20,
                "inner_tol": 1e-2,
                "power_iterations": 3,
                "reg": 20.0,
                "cg_steps": 30,
                "on_solve_failure": "damp",
                "curvature": "gauss-newton",
            },
            outer="implicit",
            reevaluates_support=True,
        ),
    )
}
assert tuple(BUILTIN) == ALGORITHMS

_REGISTERED: dict[str, AlgorithmSpec] = {}
#: The entry points' algorithms, loaded on first use; and why a plug-in failed to load.
_PLUGINS: dict[str, AlgorithmSpec] | None = None
_BROKEN: dict[str, str] = {}


def register_algorithm(
    name: str,
    factory: Callable[..., MetaLearner] | str,
    *,
    options: type | None = None,
    label: str | None = None,
    color: str | None = None,
    defaults: Mapping[str, Any] | None = None,
    **capabilities: Any,
) -> AlgorithmSpec:
    """Make an algorithm available by ``name`` in this process, everywhere an algorithm is named.

    Installed packages should declare a ``metaopt.algorithms`` entry point instead; this is for
    notebooks and tests. ``factory`` may also be a ``metaopt.rules.Rule`` subclass (see
    `rule_spec`). ``capabilities`` are the other fields of `AlgorithmSpec` (``exact=True``, ...).

    Raises:
        ValueError: ``name`` is a built-in algorithm's.
    """
    if name in BUILTIN:
        raise ValueError(f"{name!r} is a built-in algorithm; choose another name")
    given = {"options": options, "label": label, "color": color, "defaults": defaults}
    spec = spec_of(name, factory, **{k: v for k, v in given.items() if v is not None})
    spec = dataclasses.replace(spec, **capabilities) if capabilities else spec
    _REGISTERED[name] = spec
    return spec


def unregister_algorithm(name: str) -> None:
    """Forget an algorithm `register_algorithm` added (a no-op for any other name)."""
    _REGISTERED.pop(name, None)


def spec_of(name: str, found: Any, **fields: Any) -> AlgorithmSpec:
    """The `AlgorithmSpec` that ``found`` (what an entry point names) describes: itself, a
    ``metaopt.rules.Rule`` subclass (`rule_spec`), or a factory. ``fields`` are given to a spec
    made here.

    Raises:
        ValueError: a spec or rule named otherwise than ``name``.
    """
    if isinstance(found, AlgorithmSpec):
        spec = dataclasses.replace(found, **fields) if fields else found
    elif _is_rule(found):
        spec = rule_spec(found, **fields)
    elif callable(found) or isinstance(found, str):
        spec = AlgorithmSpec(name, found, **fields)
    else:
        raise TypeError(f"{name}: expected an AlgorithmSpec, a Rule or a factory, got {found!r}")
    if spec.name != name:
        raise ValueError(f"{name!r} names an algorithm called {spec.name!r}")
    return spec


def _is_rule(found: Any) -> bool:
    """Whether ``found`` is a ``metaopt.rules.Rule`` subclass (asked without importing torch)."""
    return isinstance(found, type) and any(
        base.__name__ == "Rule" and base.__module__ == "metaopt.rules.base"
        for base in found.__mro__
    )


def rule_spec(rule: type, **fields: Any) -> AlgorithmSpec:
    """The `AlgorithmSpec` of a ``metaopt.rules.Rule`` subclass: its ``name``, ``label``,
    ``color``, ``Options`` and ``outer`` from the class, ``exact`` where its outer rule is the query
    gradient, second order; and a factory that builds ``metaopt.MetaLearner(model, ...,
    rule=rule(**options))`` (`rule_learner`). ``fields`` override any of them: a ``factory`` of
    your own (one that hands the rule a run setting, such as the inner step count), capabilities.
    """
    values = {
        "name": rule.name,  # type: ignore[attr-defined]
        "factory": functools.partial(rule_learner, rule),
        "label": rule.label,  # type: ignore[attr-defined]
        "color": rule.color,  # type: ignore[attr-defined]
        "options": rule.Options or builtin.NoOptions,  # type: ignore[attr-defined]
        "outer": rule.outer,  # type: ignore[attr-defined]
        "exact": rule.outer == "query-gradient" and bool(rule.second_order),  # type: ignore[attr-defined]
    }
    return AlgorithmSpec(**{**values, **fields})


def rule_learner(rule: type, model: nn.Module, **settings: Any) -> MetaLearner:
    """``metaopt.MetaLearner(model, ..., rule=rule(**options))``: the learner settings (`LEARNER`)
    to the learner, the rest to the rule's constructor."""
    from metaopt.algorithms import MetaLearner

    learner = {name: settings.pop(name) for name in LEARNER if name in settings}
    return MetaLearner(model, **learner, rule=rule(**settings))


def _plugins() -> dict[str, AlgorithmSpec]:
    """The ``metaopt.algorithms`` entry points' algorithms, loaded once; a plug-in that fails to
    load is left out (`algorithm` says why when it is named)."""
    global _PLUGINS
    if _PLUGINS is None:
        loaded: dict[str, AlgorithmSpec] = {}
        for ep in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda ep: ep.name):
            try:
                if ep.name in BUILTIN:
                    raise ValueError(f"{ep.name!r} is a built-in algorithm's name")
                spec = spec_of(ep.name, ep.load())
                if spec.name != ep.name:
                    raise ValueError(
                        f"its entry point is named {ep.name!r}, its spec {spec.name!r}"
                    )
                loaded[ep.name] = spec
            except Exception as error:  # a broken plug-in must not take the others down
                _BROKEN[ep.name] = f"{ep.value}: {type(error).__name__}: {error}"
        _PLUGINS = loaded
    return _PLUGINS


def algorithms() -> dict[str, AlgorithmSpec]:
    """Every available algorithm by name: the built-in ones, then plug-ins and registered ones."""
    return {**BUILTIN, **_plugins(), **_REGISTERED}


def algorithm_names() -> tuple[str, ...]:
    """The names ``--algo`` accepts, in the order of `algorithms`."""
    return tuple(algorithms())


def algorithm(name: str) -> AlgorithmSpec:
    """The algorithm called ``name``.

    Raises:
        ConfigError: an unknown name (listing the available ones) or a plug-in that failed to
            load (saying why).
    """
    found = algorithms().get(name)
    if found is not None:
        return found
    if name in _BROKEN:
        raise ConfigError(f"--algo {name}: its plug-in failed to load ({_BROKEN[name]})")
    raise ConfigError(f"--algo must be one of {', '.join(algorithm_names())}; got {name!r}")


def color(name: str) -> str:
    """The report colour of algorithm ``name``: its own, else the next free one of a palette."""
    specs = algorithms()
    if name in specs and specs[name].color is not None:
        return str(specs[name].color)
    colourless = [n for n, spec in specs.items() if spec.color is None]
    index = colourless.index(name) if name in colourless else len(colourless)
    return PALETTE[index % len(PALETTE)]


def build_learner(name: str, model: nn.Module, **settings: Any) -> MetaLearner:
    """Algorithm ``name``'s learner around ``model``: `AlgorithmSpec.build` of `algorithm`."""
    return algorithm(name).build(model, **settings)


class AlgorithmDefaults(Mapping[str, Mapping[str, Any]]):
    """Each algorithm's ``defaults`` by name, read from the registry at each lookup (so that a
    plug-in registered later is seen): ``TrainConfig.ALGORITHM_DEFAULTS``."""

    def __getitem__(self, name: str) -> Mapping[str, Any]:
        spec = algorithms().get(name)
        if spec is None or not spec.defaults:
            raise KeyError(name)
        return spec.defaults

    def __iter__(self) -> Iterator[str]:
        return iter([n for n, spec in algorithms().items() if spec.defaults])

    def __len__(self) -> int:
        return len(list(iter(self)))
