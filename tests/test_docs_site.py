"""The docs site's API reference (mkdocs + mkdocstrings, docs/api/): every name it lists exists
and is documented, down to the public methods of its classes. `mkdocs build --strict` in
.ci/run catches broken links and docstrings that do not parse."""

from __future__ import annotations

import importlib
import inspect
import re
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
ENTRY = re.compile(r"^::: ([\w.]+)\s*$", re.MULTILINE)


def reference_entries() -> list[str]:
    pages = sorted((ROOT / "docs" / "api").glob("*.md"))
    return [name for page in pages for name in ENTRY.findall(page.read_text())]


def resolve(dotted: str) -> Any:
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for attribute in parts[cut:]:
            obj = getattr(obj, attribute)
        return obj
    raise ImportError(dotted)


def undocumented(obj: Any, name: str) -> list[str]:
    missing = [] if inspect.getdoc(obj) else [name]
    if inspect.isclass(obj):
        for attribute, member in vars(obj).items():
            if attribute.startswith("_") or not (
                inspect.isfunction(member) or isinstance(member, property)
            ):
                continue
            if not inspect.getdoc(getattr(obj, attribute)):  # an override may inherit its doc
                missing.append(f"{name}.{attribute}")
    elif inspect.ismodule(obj):
        for attribute in getattr(obj, "__all__", []):
            missing += undocumented(getattr(obj, attribute), f"{name}.{attribute}")
    return missing


def test_the_reference_lists_the_public_api() -> None:
    entries = set(reference_entries())
    for name in (
        "metaopt.MAML",
        "metaopt.MetaSGD",
        "metaopt.Reptile",
        "metaopt.testing",
        "metaopt.training.train",
    ):
        assert name in entries


@pytest.mark.parametrize("name", reference_entries())
def test_every_reference_entry_is_documented(name: str) -> None:
    assert not undocumented(resolve(name), name)
