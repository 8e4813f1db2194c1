"""Public names of a package, imported from their modules on first use (PEP 562).

``metaopt`` and ``metaopt.training`` re-export names whose modules import torch. Importing them on
first use keeps ``import metaopt.cli`` free of torch, so that ``metaopt --help`` and argument
errors answer in a fraction of a second. Each package also imports the same names under
``TYPE_CHECKING``, so type checkers and readers see where every name comes from.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["lazy_exports"]


def lazy_exports(package: str, where: Mapping[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` for ``package`` that imports name ``n`` from module ``where[n]``.

    The value is stored in the package's namespace, so the import happens once.
    """

    def __getattr__(name: str) -> Any:
        module = where.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        setattr(sys.modules[package], name, value)
        return value

    return __getattr__
