"""Command-line flags from a family's config dataclass, and the one place a config is resolved.

Resolution order: the dataclass defaults, then the preset's values, then the flags the user gave.
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

from metaopt.training.family import ConfigError, TaskFamily, TrainConfig

__all__ = ["add_config_arguments", "load_config", "resolve_config"]


def _field_types(config_class: type[TrainConfig]) -> dict[str, Any]:
    return typing.get_type_hints(config_class)


def _base_type(annotation: Any) -> Any:
    """``int | None`` -> int; ``tuple[int, ...]`` stays as it is."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return args[0] if len(args) == 1 else str
    return annotation


def _parse_tuple(item_type: type) -> Any:
    def parse(text: str) -> tuple[Any, ...]:
        try:
            return tuple(item_type(part) for part in text.split(",") if part.strip())
        except ValueError as error:
            raise argparse.ArgumentTypeError(
                f"expected comma-separated {item_type.__name__} values, got {text!r}"
            ) from error

    return parse


def add_config_arguments(parser: argparse.ArgumentParser, family: TaskFamily) -> None:
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
        shown = f"default: {default}" if default is not None else "default: none"
        if by_preset:
            shown += "; " + ", ".join(f"preset {p}: {v}" for p, v in by_preset.items())
        help_text = f"{f.metadata.get('help', '')} ({shown})".replace("%", "%%")
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
            parser.add_argument(flag, type=kind if kind in (int, float) else str, **kwargs)


def resolve_config(family: TaskFamily, overrides: Mapping[str, Any]) -> TrainConfig:
    """Defaults, then the preset (``overrides["preset"]`` or the family's default), then overrides.

    Raises:
        ConfigError: unknown preset or field, or a value out of range.
    """
    names = {f.name for f in dataclasses.fields(family.config_class)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise ConfigError(f"{family.name}: unknown option(s) {', '.join(unknown)}")
    values: dict[str, Any] = {}
    preset = overrides.get("preset", family.config_class().preset)
    if preset is not None:
        if preset not in family.presets:
            choices = ", ".join(sorted(family.presets)) or "none"
            raise ConfigError(f"--preset must be one of {choices}; got {preset!r}")
        values.update(family.presets[preset])
    values.update(overrides)
    config = family.config_class(**values)
    config.validate()
    family.validate(config)
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
