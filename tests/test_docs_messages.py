"""Messages quoted in the docs are the ones the code prints."""

from __future__ import annotations

from pathlib import Path

import pytest

from metaopt.training import ConfigError, resolve_config
from metaopt.training.resuming import _resumed_config
from supervised.sine.family import SineFamily

DOCS = Path(__file__).resolve().parent.parent / "docs"


def test_reliability_quotes_the_real_resume_refusal() -> None:
    # docs/reliability.md: `metaopt train sine --resume runs/sine-maml --inner-lr 0.1` on a run
    # with the default inner lr.
    family = SineFamily()
    config = resolve_config(family, {})
    assert config.inner_lr == 0.01
    with pytest.raises(ConfigError) as refused:
        _resumed_config(family, config, {"inner_lr": 0.1})
    quoted = [
        line
        for line in (DOCS / "reliability.md").read_text().splitlines()
        if line.startswith("metaopt: error: --inner-lr 0.1 differs")
    ]
    assert quoted == [f"metaopt: error: {refused.value}"]
