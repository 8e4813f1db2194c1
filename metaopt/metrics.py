"""What one ``meta_backward`` call reports: [`MetaMetrics`][metaopt.MetaMetrics], the per-task
losses of the meta-batch (some computed only when read)."""

from __future__ import annotations

from collections.abc import Callable

import torch

__all__ = ["MetaMetrics"]


class MetaMetrics:
    """Per-task losses of one ``meta_backward`` call, each a 1-D tensor with one entry per task.

    Attributes:
        support_before: support loss at θ, before adaptation.
        support_after: support loss at the adapted parameters θ'. Computed on first access
            (one more forward pass per task, or for RL one more round of sampling), so a caller
            that never reads it does not pay for it; the loop engine keeps a detached copy of
            each task's adapted parameters for it.
        query: query loss at θ'. Computed on first access where the meta-gradient does not need
            it (Reptile on the compiled engine); otherwise it comes with the meta-gradient.
        extra: The algorithm's own numbers of this call, each the worst (largest) over its
            tasks (iMAML: its solves' residuals, steps and damping), logged beside the means;
            under torchrun the largest over the processes.
        dropped: Whether the algorithm left ``.grad`` as it was, asking that this meta-batch
            take no outer step (iMAML's ``on_solve_failure="skip"``).
    """

    __slots__ = ("_query", "_support_after", "dropped", "extra", "support_before")

    def __init__(
        self,
        support_before: torch.Tensor,
        support_after: torch.Tensor | Callable[[], torch.Tensor],
        query: torch.Tensor | Callable[[], torch.Tensor],
    ) -> None:
        self.support_before = support_before
        self._support_after = support_after
        self._query = query
        self.extra: dict[str, float] = {}
        self.dropped = False

    @property
    def support_after(self) -> torch.Tensor:
        """Per-task support loss after adaptation, ``[B]``; computed on first access."""
        if callable(self._support_after):
            self._support_after = self._support_after()
        return self._support_after

    @property
    def query(self) -> torch.Tensor:
        """Per-task query loss after adaptation, ``[B]``."""
        if callable(self._query):
            self._query = self._query()
        return self._query

    def means(self) -> dict[str, float]:
        """Task-averaged values, for logging."""
        return {
            "support_before": self.support_before.mean().item(),
            "support_after": self.support_after.mean().item(),
            "query": self.query.mean().item(),
            **self.extra,
        }

    def __repr__(self) -> str:
        return (
            f"MetaMetrics(support_before={self.support_before}, "
            f"support_after={self.support_after}, query={self.query})"
        )
