"""iMAML's rule: the inner optimiser on the regularised support loss, and the implicit outer rule
(the adapted parameters tied to θ by the implicit function theorem; `metaopt.algorithms.imaml`
runs it on the vectorised and the loop engine)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torchopt.base import GradientTransformation

from metaopt.rules.base import Rule
from metaopt.rules.proximal import proximal

__all__ = ["IMAMLRule"]


class IMAMLRule(Rule):
    """iMAML (Rajeswaran et al., 2019): steps on $\\mathcal{L}^s(\\phi) + \\frac\\lambda2
    \\lVert\\phi-\\theta\\rVert^2$ without a graph, and the implicit meta-gradient
    $(I + H/\\lambda)^{-1}\\nabla\\mathcal{L}^q$."""

    name = "imaml"
    label = "iMAML"
    color = "C4"
    outer = "implicit"
    second_order = False
    compiles = False

    def __init__(self, reg: float = 1.0) -> None:
        self.reg = reg

    def transform(
        self, inner_optimizer: str, inner_lr: float, learned: Sequence[torch.Tensor]
    ) -> GradientTransformation:
        return proximal(super().transform(inner_optimizer, inner_lr, learned), self.reg)

    def options(self) -> dict[str, Any]:
        return {"reg": self.reg}
