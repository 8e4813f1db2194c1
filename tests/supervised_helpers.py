"""Shared fixtures of the supervised tests (import them into a test module to use them)."""

from __future__ import annotations

from pathlib import Path

import pytest

from supervised.omniglot.data import make_fixture

#: A small synthetic Omniglot: 4 alphabets × 5 characters × 20 drawings (20 characters).
FIXTURE = {"alphabets": 4, "characters": 5, "drawers": 20}

#: Split flags that fit the fixture: 12 training, 3 validation and 5 test characters.
FIXTURE_SPLIT = {"train_classes": 12, "val_classes": 3}


@pytest.fixture(scope="session", name="omniglot_dir")
def omniglot_dir_fixture(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A read-only synthetic Omniglot folder shared by the session (copy it before changing it)."""
    return make_fixture(tmp_path_factory.mktemp("omniglot") / "data", **FIXTURE)
