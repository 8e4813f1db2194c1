"""Find task families: the ``metaopt.task_families`` entry points, plus any registered in-process.

`family_options` reads what the command line shows of a family from the lighter
``metaopt.family_options`` entry points (`FamilyOptions`), so that
parsing arguments imports no domain.
"""

from __future__ import annotations

import importlib.util
from importlib.metadata import entry_points

from metaopt.training.family import ConfigError, FamilyOptions, TaskFamily

__all__ = [
    "available_families",
    "family_options",
    "get_family",
    "missing_requirement",
    "register_family",
]

_REGISTERED: dict[str, type[TaskFamily]] = {}
_ENTRY_POINT_GROUP = "metaopt.task_families"
_OPTIONS_GROUP = "metaopt.family_options"


def register_family(family: type[TaskFamily]) -> type[TaskFamily]:
    """Make ``family`` available by its ``name`` in this process (usable as a class decorator).

    Installed packages should declare an entry point instead; this is for notebooks and tests.
    """
    if not family.name:
        raise ValueError(f"{family.__name__}.name is empty")
    _REGISTERED[family.name] = family
    return family


def available_families() -> dict[str, str]:
    """Family name -> where it comes from (entry point value or ``registered``), sorted by name."""
    found = {ep.name: ep.value for ep in entry_points(group=_ENTRY_POINT_GROUP)}
    found.update({name: "registered" for name in _REGISTERED})
    return dict(sorted(found.items()))


def get_family(name: str) -> TaskFamily:
    """An instance of the family called ``name``.

    Raises:
        ConfigError: for an unknown name, listing the available ones, or a family whose
            optional dependency is not installed (`missing_requirement`).
    """
    if name in _REGISTERED:
        return _REGISTERED[name]()
    options = family_options(name)
    missing = missing_requirement(options) if options is not None else None
    if missing is not None:
        raise ConfigError(f"task family {name!r} {missing}")
    for ep in entry_points(group=_ENTRY_POINT_GROUP):
        if ep.name == name:
            family = ep.load()
            if not (isinstance(family, type) and issubclass(family, TaskFamily)):
                raise TypeError(f"entry point {ep.value} is not a TaskFamily subclass")
            return family()
    choices = ", ".join(available_families()) or "none installed"
    raise ConfigError(f"unknown task family {name!r}; available: {choices}")


def family_options(name: str) -> FamilyOptions | None:
    """The description, config class and presets of family ``name`` without importing it: from
    its ``metaopt.family_options`` entry point, or from the class registered in-process; ``None``
    when it declares none (the command line then imports the family itself)."""
    if name in _REGISTERED:
        family = _REGISTERED[name]
        return FamilyOptions(family.description, family.config_class, family.presets)
    for ep in entry_points(group=_OPTIONS_GROUP):
        if ep.name == name:
            options = ep.load()
            if not isinstance(options, FamilyOptions):
                raise TypeError(f"entry point {ep.value} is not a FamilyOptions")
            return options
    return None


def missing_requirement(options: FamilyOptions) -> str | None:
    """Why a family cannot run here, in a phrase (its ``requires`` module is not installed:
    ``metaopt families`` lists it as unavailable, ``metaopt train`` refuses), else ``None``."""
    if options.requires is None or importlib.util.find_spec(options.requires) is not None:
        return None
    return f"needs {options.requires}, which is not installed; install it with: {options.install}"
