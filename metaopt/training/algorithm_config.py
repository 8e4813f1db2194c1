"""The algorithms' options among a run's flags: which algorithm owns a flag, and the values that
reach ``TrainConfig.algo_options``.

The command line gives every algorithm's options flat, beside the run's fields (``--reg 20``);
`split_values` hands the chosen algorithm its own and refuses another's, naming the flag and the
algorithm it belongs to. A family's renamed flags (``TrainConfig.RENAMED``) are read under their
new names first, with a `RenamedOptionWarning`. This module imports no torch.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Collection, Mapping
from typing import Any

from metaopt.options import ConfigError, flag
from metaopt.registry import algorithm, algorithms
from metaopt.training.train_config import TrainConfig

__all__ = [
    "RenamedOptionWarning",
    "config_flag_names",
    "option_owners",
    "refuse_foreign",
    "renamed",
    "run_fields",
    "split_values",
]


class RenamedOptionWarning(FutureWarning):
    """A flag was given by the old name of a family's renamed field (``TrainConfig.RENAMED``)."""


def run_fields(config_class: type[TrainConfig]) -> set[str]:
    """The run's own fields: every field of ``config_class`` but ``algo_options``."""
    return {f.name for f in dataclasses.fields(config_class)} - {"algo_options"}


def option_owners(config_class: type[TrainConfig]) -> dict[str, list[str]]:
    """Each algorithm option's name -> the algorithms that have it, in registry order; a name the
    run's config or ``RENAMED`` uses is the run's, not an option's (the family's flag wins)."""
    taken = run_fields(config_class) | set(config_class.RENAMED)
    owners: dict[str, list[str]] = {}
    for name, spec in algorithms().items():
        for option in spec.option_names():
            if option not in taken:
                owners.setdefault(option, []).append(name)
    return owners


def config_flag_names(config_class: type[TrainConfig]) -> set[str]:
    """Every name a flag of ``config_class``'s command may set: the run's fields, the algorithms'
    options and the renamed fields' old names."""
    return run_fields(config_class) | set(option_owners(config_class)) | set(config_class.RENAMED)


def renamed(
    config_class: type[TrainConfig], values: Mapping[str, Any], family: str
) -> dict[str, Any]:
    """``values`` with a renamed field's old name replaced by its new one, with a
    `RenamedOptionWarning` (both names at once: refused)."""
    values = dict(values)
    for old, new in config_class.RENAMED.items():
        if old not in values:
            continue
        if new in values:
            raise ConfigError(f"{flag(old)} is the old name of {flag(new)}: give only {flag(new)}")
        warnings.warn(
            f"{flag(old)} is the old name of {flag(new)} for {family}; use {flag(new)}",
            RenamedOptionWarning,
            stacklevel=3,
        )
        values[new] = values.pop(old)
    return values


def refuse_foreign(name: str, value: Any, owners: list[str], chosen: str) -> None:
    """Refuse option ``name`` of the algorithms ``owners`` given where ``chosen`` (``--algo X``,
    ``--methods ...``) has no use for it: its value's own range first, then that it applies
    elsewhere.

    Raises:
        ConfigError: always.
    """
    owner = algorithm(owners[0])
    owner.make_options({name: value})
    meta = {f.name: f.metadata for f in dataclasses.fields(owner.options)}[name]
    applies = meta.get("applies", f"--algo {', '.join(owners)}")
    raise ConfigError(f"{flag(name)} applies to {applies} only; got {chosen}")


def split_values(
    config_class: type[TrainConfig],
    algo: str,
    values: Mapping[str, Any],
    given: Collection[str],
    methods: Collection[str] = (),
) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """The run's fields of ``values`` and the algorithms' options, by algorithm: ``algo``'s from
    ``values``, each of ``methods`` (compared alongside it) its own of those ``given``.

    Args:
        config_class: The family's config.
        algo: The chosen algorithm.
        values: Defaults, preset and flags merged, by field or option name.
        given: The names the user gave (flags): an option among them that neither ``algo`` nor a
            method has is refused; one from a default or preset is dropped.
        methods: Other algorithms run with the same flags (``metaopt compare``).

    Raises:
        ConfigError: an option given for an algorithm that does not have it.
    """
    fields = run_fields(config_class)
    owners = option_owners(config_class)
    run = {k: v for k, v in values.items() if k in fields}
    chosen = [algo, *(m for m in methods if m != algo)]
    options: dict[str, dict[str, Any]] = {}
    for index, name in enumerate(chosen):
        own = set(algorithm(name).option_names()) & set(owners)
        source = values if index == 0 else {k: values[k] for k in given if k in values}
        options[name] = {k: v for k, v in source.items() if k in own}
    for name in given:
        if name in owners and not any(name in options[m] for m in chosen):
            where = f"--methods {','.join(chosen)}" if methods else f"--algo {algo}"
            refuse_foreign(name, values[name], owners[name], where)
    return run, options
