"""MAML's rule (second and first order) and Meta-SGD's: the query loss after adaptation,
differentiated back to the initialisation (and Meta-SGD's learned rates)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torchopt.base import GradientTransformation

from metaopt.inner import learned_rate_sgd, per_step_rate_sgd, positive_rates, softplus_inverse
from metaopt.options import ALGORITHM_LOOKS
from metaopt.rules.base import Diagnostic, Learned, Names, Rule

__all__ = ["MAMLRule", "MetaSGDRule", "NegativeRateWarning"]


class MAMLRule(Rule):
    """MAML (Finn et al., 2017): the inner optimiser's steps, differentiated through (second
    order) or with the inner gradients held constant (``first_order``, first-order MAML).

    With ``lslr_steps`` = K > 0 the inner update is SGD with MAML++'s learned per-layer,
    per-step rates (LSLR, Antoniou et al., 2019): one rate α_{i,k} per parameter tensor i and
    inner step k, starting at the inner learning rate and meta-learned with θ
    (`metaopt.inner.per_step_rate_sgd`); a parameter the inner loop does not adapt keeps rates
    of 0, not meta-learned.
    """

    def __init__(self, first_order: bool = False, lslr_steps: int = 0) -> None:
        if not isinstance(first_order, bool):
            raise TypeError(f"first_order must be a bool, got {first_order!r}")
        if isinstance(lslr_steps, bool) or not isinstance(lslr_steps, int) or lslr_steps < 0:
            raise ValueError(f"lslr_steps must be an integer >= 0, got {lslr_steps!r}")
        self.first_order = first_order
        self.second_order = not first_order
        self.lslr_steps = lslr_steps
        self.name = "fomaml" if first_order else "maml"
        self.label, self.color = ALGORITHM_LOOKS[self.name]

    def options(self) -> dict[str, Any]:
        return {"first_order": self.first_order, "lslr_steps": self.lslr_steps}

    def learned(
        self, params: Sequence[torch.Tensor], adapts: Sequence[bool], inner_lr: float
    ) -> list[torch.Tensor]:
        if not self.lslr_steps:
            return []
        return [
            torch.full(
                (self.lslr_steps,), inner_lr if a else 0.0, dtype=p.dtype, device=p.device
            ).requires_grad_(p.requires_grad and a)
            for p, a in zip(params, adapts, strict=True)
        ]

    def transform(
        self, inner_optimizer: str, inner_lr: float, learned: Sequence[torch.Tensor]
    ) -> GradientTransformation:
        if not self.lslr_steps:
            return super().transform(inner_optimizer, inner_lr, learned)
        if inner_optimizer != "sgd":
            raise ValueError(
                f"learned per-step rates (lslr) are SGD's; got inner_optimizer={inner_optimizer!r}"
            )
        return per_step_rate_sgd(learned)

    def describe(
        self, inner_optimizer: str, inner_lr: float, learned: Sequence[torch.Tensor]
    ) -> dict[str, Any]:
        if not self.lslr_steps:
            return super().describe(inner_optimizer, inner_lr, learned)
        rates = [r.detach() for r in learned if r.requires_grad]
        return {
            "rule": "sgd (learned per-layer, per-step rates: MAML++'s LSLR)",
            "lr": inner_lr,
            "step_rates_mean": [
                torch.stack([r[k] for r in rates]).mean().item() for k in range(self.lslr_steps)
            ],
        }


class NegativeRateWarning(UserWarning):
    """A raw Meta-SGD rate has turned negative (said once per learner; the command line prints it
    as one ``metaopt: warning:`` line)."""


class MetaSGDRule(MAMLRule):
    """Meta-SGD (Li et al., 2017): SGD with a learned rate for every parameter entry, α (or ρ with
    α = softplus(ρ) under ``positive_rates``), meta-learned with θ."""

    def __init__(self, first_order: bool = False, positive_rates: bool = False) -> None:
        if not isinstance(positive_rates, bool):
            raise TypeError(f"positive_rates must be a bool, got {positive_rates!r}")
        super().__init__(first_order)
        self.positive_rates = positive_rates
        self.name = "metasgd"
        self.label, self.color = ALGORITHM_LOOKS[self.name]

    def options(self) -> dict[str, Any]:
        return {"first_order": self.first_order, "positive_rates": self.positive_rates}

    def learned(
        self, params: Sequence[torch.Tensor], adapts: Sequence[bool], inner_lr: float
    ) -> list[torch.Tensor]:
        start = softplus_inverse(inner_lr) if self.positive_rates else inner_lr
        # a rate the inner loop does not use is 0 (softplus cannot reach 0: the mask keeps such a
        # parameter still whatever its rate)
        return [
            torch.full_like(p, start if a else 0.0).requires_grad_(p.requires_grad and a)
            for p, a in zip(params, adapts, strict=True)
        ]

    def transform(
        self, inner_optimizer: str, inner_lr: float, learned: Sequence[torch.Tensor]
    ) -> GradientTransformation:
        return learned_rate_sgd(list(learned), positive=self.positive_rates)

    def rates(self, learned: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """The rates α themselves (detached; 0 where the inner loop takes no step)."""
        raw = [rate.detach() for rate in learned]
        if not self.positive_rates:
            return raw
        keep = [rate.requires_grad for rate in learned]
        return [
            a if k else torch.zeros_like(a) for a, k in zip(positive_rates(raw), keep, strict=True)
        ]

    def check(self, learned: Sequence[torch.Tensor]) -> torch.Tensor | None:
        # The lowest rate, fused into the compiled graph (eagerly, a reduction over the rates and
        # a host sync cost a tenth of a small compiled meta-iteration).
        rates = tuple(r for r in learned if r.numel())
        if self.positive_rates or not rates:
            return None
        return torch.cat([r.reshape(-1) for r in rates]).min()

    def warning(self, learned: Learned, names: Names, diagnostic: Diagnostic) -> Warning | None:
        """A `NegativeRateWarning` when a raw learned rate has turned negative (an inner step
        that climbs)."""
        if self.positive_rates or (diagnostic is not None and diagnostic.item() >= 0):
            return None  # the compiled graph's lowest rate: no search
        # One reduction and one host sync per call, the per-rate search only once one is negative
        # (a check per rate cost more than the compiled meta-iteration's own Python).
        rates = [rate for rate in learned if rate.requires_grad and rate.numel()]
        with torch.no_grad():
            if not rates or torch.cat([rate.reshape(-1) for rate in rates]).min().item() >= 0:
                return None
            for name, rate in zip(names, learned, strict=True):
                if rate.requires_grad and rate.numel() and bool((rate < 0).any()):
                    return NegativeRateWarning(
                        f"Meta-SGD's learned rate of {name} has turned negative "
                        f"({int((rate < 0).sum())} of {rate.numel()} entries, lowest "
                        f"{rate.min().item():.4g}): those entries step up the support loss. "
                        "positive_rates=True (--positive-rates) keeps every rate positive "
                        "(α = softplus(ρ))"
                    )
        return None

    def describe(
        self, inner_optimizer: str, inner_lr: float, learned: Sequence[torch.Tensor]
    ) -> dict[str, Any]:
        alphas = self.rates(learned)
        rates = torch.cat(
            [a.flatten() for a, r in zip(alphas, learned, strict=True) if r.requires_grad]
        )
        return {
            "rule": "meta-sgd (learned per-parameter rates)",
            **({"rates": "softplus (positive)"} if self.positive_rates else {}),
            "rate_mean": rates.mean().item(),
            "rate_min": rates.min().item(),
            "rate_max": rates.max().item(),
        }
