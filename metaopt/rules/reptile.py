"""Reptile's rule: plain steps on the support loss, and θ − θ′ as the meta-gradient."""

from __future__ import annotations

from typing import Any

from metaopt.options import ALGORITHM_LOOKS
from metaopt.rules.base import Rule

__all__ = ["ReptileRule"]


class ReptileRule(Rule):
    """Reptile (Nichol et al., 2018): the inner optimiser's steps without a graph, and the
    difference rule $\\sum_b(\\theta - \\tilde\\theta_b)$."""

    name = "reptile"
    label, color = ALGORITHM_LOOKS[name]
    outer = "difference"
    second_order = False

    def options(self) -> dict[str, Any]:
        return {}
