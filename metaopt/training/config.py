"""Command-line flags from a dataclass, and the one place a family's config is resolved.

Resolution order: the dataclass defaults, then the algorithm's (``TrainConfig.ALGORITHM_DEFAULTS``),
then the preset's values, then the flags the user gave.

`add_config_arguments` gives ``metaopt train FAMILY`` its flags from the family's config, and
each algorithm's options under a heading of their own (``iMAML options (algo imaml)``);
`add_dataclass_arguments` and `dataclass_from_arguments` do the same for any dataclass
whose fields carry a ``help`` in their metadata (the tools' option classes), and build the instance
back from the parsed arguments.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from metaopt.options import flag, reader, tuple_reader
from metaopt.registry import algorithm, algorithm_names
from metaopt.training.algorithm_config import option_owners, renamed, run_fields, split_values
from metaopt.training.family import ConfigError, FamilyOptions, TaskFamily, TrainConfig

__all__ = [
    "add_config_arguments",
    "add_dataclass_arguments",
    "dataclass_arguments",
    "dataclass_from_arguments",
    "load_config",
    "resolve_config",
]


def _field_types(config_class: type[Any]) -> dict[str, Any]:
    return typing.get_type_hints(config_class)


def _base_type(annotation: Any) -> Any:
    """``int | None`` -> int; ``tuple[int, ...]`` stays as it is."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return args[0] if len(args) == 1 else str
    return annotation


#: How a flag of each field type reads its text (other types: as text).
_READERS: dict[Any, Any] = {int: reader(int), float: reader(float), Path: Path}


def add_config_arguments(
    parser: argparse.ArgumentParser, family: TaskFamily | FamilyOptions
) -> None:
    """One flag per field of ``family.config_class``, then each algorithm's options under its own
    heading; help shows the default (and preset and algorithm values)."""
    config_class = family.config_class
    hints = _field_types(config_class)
    defaults = config_class()
    for f in dataclasses.fields(config_class):
        if "help" not in f.metadata:
            continue
        help_text = f.metadata["help"]
        if f.name == "algo":
            help_text += ": " + ", ".join(algorithm_names())
        kind = _base_type(hints[f.name])
        _add_flag(parser, f.name, kind, help_text, getattr(defaults, f.name), family)
        if f.name == "engine":  # the spelling of --engine compiled
            parser.add_argument(
                "--compile",
                dest="engine",
                action="store_const",
                const="compiled",
                default=argparse.SUPPRESS,
                help="the same as --engine compiled",
            )
    for old, new in config_class.RENAMED.items():
        parser.add_argument(
            flag(old),
            dest=old,
            type=_READERS.get(_base_type(hints[new]), str),
            default=argparse.SUPPRESS,
            help=f"deprecated: the old name of {flag(new)}",
        )
    owners = option_owners(config_class)
    groups: dict[tuple[str, ...], Any] = {}
    for name, owned_by in owners.items():
        first = algorithm(owned_by[0])
        if tuple(owned_by) not in groups:
            # "algo imaml", not "--algo imaml": compare refuses --algo (its --methods name them)
            title = (
                f"{first.label} options (algo {first.name})"
                if len(owned_by) == 1
                else f"options of algo {', '.join(owned_by)}"
            )
            groups[tuple(owned_by)] = parser.add_argument_group(title)
        f = {f.name: f for f in dataclasses.fields(first.options)}[name]
        kind = _base_type(_field_types(first.options)[name])
        help_text = f.metadata.get("help", "")
        _add_flag(groups[tuple(owned_by)], name, kind, help_text, _default(f), family)


def _add_flag(
    parser: Any,
    name: str,
    kind: Any,
    help_text: str,
    default: Any,
    family: TaskFamily | FamilyOptions,
) -> None:
    """The flag of field or option ``name``: its help with the default, the presets' values and
    the algorithms' defaults; a value given is kept (argparse's default: absent)."""
    by_preset = {p: values[name] for p, values in family.presets.items() if name in values}
    # A None default says nothing the help text does not (--out says where runs go).
    notes = [] if default is None else [f"default: {_shown(default)}"]
    notes += [f"preset {p}: {_shown(v)}" for p, v in by_preset.items()]
    notes += [
        f"algo {algo}: {_shown(values[name])}"
        for algo, values in family.config_class.ALGORITHM_DEFAULTS.items()
        if name in values
    ]
    if name == "preset" and family.presets:
        notes.append("presets: " + ", ".join(sorted(family.presets)))
    if notes:
        help_text += f" ({'; '.join(notes)})"
    kwargs: dict[str, Any] = {
        "dest": name,
        "default": argparse.SUPPRESS,
        "help": help_text.replace("%", "%%"),
    }
    if name == "preset" and family.presets:
        kwargs["choices"] = sorted(family.presets)
    if kind is bool:
        parser.add_argument(flag(name), action=argparse.BooleanOptionalAction, **kwargs)
    elif typing.get_origin(kind) is tuple:
        item = typing.get_args(kind)[0]
        parser.add_argument(
            flag(name), type=tuple_reader(item), metavar=item.__name__.upper() + ",...", **kwargs
        )
    else:
        parser.add_argument(flag(name), type=_READERS.get(kind, str), **kwargs)


def _shown(value: Any) -> str:
    """A default as the user would type it: tuples comma-separated."""
    if isinstance(value, tuple):
        return ",".join(map(str, value)) if value else "empty"
    return "none" if value is None else str(value)


def _default(f: dataclasses.Field[Any]) -> Any:
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return f.default


def _dest(f: dataclasses.Field[Any], prefix: str) -> str:
    return str(f.metadata.get("dest", prefix + f.name))


def add_dataclass_arguments(
    parser: argparse.ArgumentParser, options_class: type[Any], *, prefix: str = ""
) -> None:
    """One flag per field of ``options_class`` whose metadata has a ``help``; others are skipped.

    The flag is ``--field-name`` and its destination ``prefix + field_name``. The field's metadata
    may change that, and how the value is read:

    * ``help``: what the flag means; ``(default: D)`` is appended, D the field's default as the
      user would type it (``default_text`` replaces it; a ``False`` there shows none);
    * ``flag``, ``dest``, ``metavar``: the flag's name, destination and placeholder;
    * ``type``: the function argparse reads the text with (its errors are argparse's). Without it:
      ``int``, ``float`` and ``Path`` fields read as such, ``tuple[int, ...]`` as comma-separated
      values, anything else as text;
    * ``convert``: a function applied to the text by `dataclass_from_arguments` instead (so
      that its [`ConfigError`][metaopt.training.ConfigError] reaches the user as it is);
    * a ``bool`` field whose default is ``True`` gets a flag that sets it to ``False`` (its
      ``flag`` names it, e.g. ``--no-curves``); one whose default is ``False``, a flag that sets
      it to ``True``.
    """
    hints = _field_types(options_class)
    for f in dataclasses.fields(options_class):
        if "help" not in f.metadata:
            continue
        meta = f.metadata
        flag = meta.get("flag", "--" + f.name.replace("_", "-"))
        default = _default(f)
        kind = _base_type(hints[f.name])
        shown = meta.get("default_text", None if kind is bool else _shown(default))
        help_text = meta["help"] + (f" (default: {shown})" if shown else "")
        kwargs: dict[str, Any] = {"dest": _dest(f, prefix), "help": help_text.replace("%", "%%")}
        if kind is bool:
            action = "store_false" if default else "store_true"
            parser.add_argument(flag, action=action, **kwargs)
            continue
        if "convert" in meta:
            kwargs.update(type=str, default=_shown(default))
        elif "type" in meta:
            kwargs.update(type=meta["type"], default=default)
        elif typing.get_origin(kind) is tuple:
            kwargs.update(type=tuple_reader(typing.get_args(kind)[0]), default=default)
        else:
            kwargs.update(type=_READERS.get(kind, str), default=default)
        parser.add_argument(flag, metavar=meta.get("metavar"), **kwargs)


def dataclass_arguments(options_class: type[Any], *, prefix: str = "") -> tuple[str, ...]:
    """The destinations `add_dataclass_arguments` gives ``options_class``'s flags."""
    return tuple(
        _dest(f, prefix) for f in dataclasses.fields(options_class) if "help" in f.metadata
    )


def dataclass_from_arguments(
    options_class: type[Any], arguments: Mapping[str, Any], *, prefix: str = ""
) -> Any:
    """The ``options_class`` instance of the parsed ``arguments`` (its flagged fields; the others
    keep their defaults), each field's ``convert`` applied.

    Raises:
        ConfigError: from a field's ``convert``.
    """
    values: dict[str, Any] = {}
    for f in dataclasses.fields(options_class):
        if "help" not in f.metadata:
            continue
        value = arguments[_dest(f, prefix)]
        convert = f.metadata.get("convert")
        values[f.name] = convert(value) if convert is not None and isinstance(value, str) else value
    return options_class(**values)


def resolve_config(
    family: TaskFamily, overrides: Mapping[str, Any], *, methods: Sequence[str] = ()
) -> TrainConfig:
    """Defaults, then the algorithm's defaults (``ALGORITHM_DEFAULTS`` of the ``algo`` the
    overrides or the preset name), then the preset (``overrides["preset"]`` or the family's
    default), then overrides.

    ``overrides`` name the run's fields and the algorithms' options alike (as the flags do); the
    chosen algorithm's options go to ``algo_options``. ``methods``: algorithms compared with it
    (``metaopt compare``), whose options the overrides may set too.

    Raises:
        ConfigError: unknown preset, field or algorithm, an option of another algorithm, a value
            out of range, or an ``adapt`` the family's model does not have.
    """
    config_class = family.config_class
    overrides = renamed(config_class, overrides, family.name)
    known = run_fields(config_class) | set(option_owners(config_class))
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ConfigError(f"{family.name}: unknown option(s) {', '.join(unknown)}")
    preset = overrides.get("preset", config_class().preset)
    preset_values: Mapping[str, Any] = {}
    if preset is not None:
        if preset not in family.presets:
            choices = ", ".join(sorted(family.presets)) or "none"
            raise ConfigError(f"--preset must be one of {choices}; got {preset!r}")
        preset_values = family.presets[preset]
    algo = overrides.get("algo", preset_values.get("algo", config_class().algo))
    algorithm(algo)  # an unknown name, before anything else is said of it
    values: dict[str, Any] = dict(config_class.ALGORITHM_DEFAULTS.get(algo, {}))
    values.update(preset_values)
    values.update(overrides)
    run, options = split_values(config_class, algo, values, set(overrides), methods)
    config = config_class(**run, algo_options=options)
    config.validate()
    family.validate(config)
    if config.adapt:
        from metaopt.training.build import check_adapt  # torch, only when the model is asked

        check_adapt(family, config)
    return config


def load_config(family: TaskFamily, path: Path) -> TrainConfig:
    """The config saved in a run's ``config.json`` (as this version reads it:
    ``TrainConfig.upgrade``), validated again."""
    saved = family.config_class.upgrade(json.loads(path.read_text())["config"])
    names = {f.name for f in dataclasses.fields(family.config_class)}
    hints = _field_types(family.config_class)
    values: dict[str, Any] = {}
    for key, value in saved.items():
        if key in names:
            is_tuple = typing.get_origin(_base_type(hints[key])) is tuple
            values[key] = tuple(value) if is_tuple and value is not None else value
    config = family.config_class(**values)
    config.validate()
    return config
