"""Command-line flags from a dataclass, and the one place a family's config is resolved.

Resolution order: the dataclass defaults, then the algorithm's (``TrainConfig.ALGORITHM_DEFAULTS``),
then the preset's values, then the flags the user gave.

`add_config_arguments` gives ``metaopt train FAMILY`` its flags from the family's config;
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
from collections.abc import Mapping
from pathlib import Path
from typing import Any

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


def _integer(text: str) -> int:
    """An ``int`` flag's value; the message of its error is argparse's one line."""
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None


def _number(text: str) -> float:
    """A ``float`` flag's value; the message of its error is argparse's one line."""
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None


#: How a flag of each field type reads its text (other types: as text).
_READERS: dict[Any, Any] = {int: _integer, float: _number, Path: Path}


def _parse_tuple(item_type: type) -> Any:
    def parse(text: str) -> tuple[Any, ...]:
        try:
            return tuple(item_type(part) for part in text.split(",") if part.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected comma-separated {item_type.__name__} values, got {text!r}"
            ) from None

    return parse


def add_config_arguments(
    parser: argparse.ArgumentParser, family: TaskFamily | FamilyOptions
) -> None:
    """One flag per field of ``family.config_class``; help shows the default (and preset values)."""
    hints = _field_types(family.config_class)
    defaults = family.config_class()
    for f in dataclasses.fields(family.config_class):
        flag = "--" + f.name.replace("_", "-")
        kind = _base_type(hints[f.name])
        default = getattr(defaults, f.name)
        by_preset = {
            preset: values[f.name] for preset, values in family.presets.items() if f.name in values
        }
        help_text = f.metadata.get("help", "")
        # A None default says nothing the help text does not (--out says where runs go).
        notes = [] if default is None else [f"default: {_shown(default)}"]
        notes += [f"preset {p}: {_shown(v)}" for p, v in by_preset.items()]
        notes += [
            f"algo {algo}: {_shown(values[f.name])}"
            for algo, values in family.config_class.ALGORITHM_DEFAULTS.items()
            if f.name in values
        ]
        if f.name == "preset" and family.presets:
            notes.append("presets: " + ", ".join(sorted(family.presets)))
        if notes:
            help_text += f" ({'; '.join(notes)})"
        help_text = help_text.replace("%", "%%")
        kwargs: dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS, "help": help_text}
        if f.name == "preset" and family.presets:
            kwargs["choices"] = sorted(family.presets)
        if kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, **kwargs)
        elif typing.get_origin(kind) is tuple:
            item = typing.get_args(kind)[0]
            parser.add_argument(
                flag, type=_parse_tuple(item), metavar=item.__name__.upper() + ",...", **kwargs
            )
        else:
            parser.add_argument(flag, type=_READERS.get(kind, str), **kwargs)
        if f.name == "engine":  # the spelling of --engine compiled
            parser.add_argument(
                "--compile",
                dest="engine",
                action="store_const",
                const="compiled",
                default=argparse.SUPPRESS,
                help="the same as --engine compiled",
            )


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
            kwargs.update(type=_parse_tuple(typing.get_args(kind)[0]), default=default)
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


def resolve_config(family: TaskFamily, overrides: Mapping[str, Any]) -> TrainConfig:
    """Defaults, then the algorithm's defaults (``ALGORITHM_DEFAULTS`` of the ``algo`` the
    overrides or the preset name), then the preset (``overrides["preset"]`` or the family's
    default), then overrides.

    Raises:
        ConfigError: unknown preset or field, a value out of range, or an ``adapt`` the
            family's model does not have.
    """
    names = {f.name for f in dataclasses.fields(family.config_class)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise ConfigError(f"{family.name}: unknown option(s) {', '.join(unknown)}")
    preset = overrides.get("preset", family.config_class().preset)
    preset_values: Mapping[str, Any] = {}
    if preset is not None:
        if preset not in family.presets:
            choices = ", ".join(sorted(family.presets)) or "none"
            raise ConfigError(f"--preset must be one of {choices}; got {preset!r}")
        preset_values = family.presets[preset]
    algo = overrides.get("algo", preset_values.get("algo", family.config_class().algo))
    values: dict[str, Any] = dict(family.config_class.ALGORITHM_DEFAULTS.get(algo, {}))
    values.update(preset_values)
    values.update(overrides)
    config = family.config_class(**values)
    config.validate()
    family.validate(config)
    if config.adapt:
        from metaopt.training.build import check_adapt  # torch, only when the model is asked

        check_adapt(family, config)
    return config


def load_config(family: TaskFamily, path: Path) -> TrainConfig:
    """The config saved in a run's ``config.json``, validated again."""
    saved = json.loads(path.read_text())["config"]
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
