"""What an algorithm is, apart from the model it runs on and the engine that runs it: a `Rule`.

A rule says how the inner loop steps (its inner transformation, a TorchOpt
``GradientTransformation``, possibly of state it meta-learns, such as Meta-SGD's rates) and how the
adapted parameters become the meta-gradient (its outer rule, one of `OUTER_RULES`). It never
touches a model, a task family or an engine: [`MetaLearner`][metaopt.MetaLearner] binds a rule to a
model and runs it on an engine, and every engine runs every rule.

The outer rules, each written once here and used by every engine:

* ``"query-gradient"``: the task-weighted query losses at the adapted parameters,
  $w\\sum_b \\mathcal{L}^q_b(\\theta'_b)$ (`weighted_query_loss`), differentiated back to θ and the
  learned state: through the inner steps' graphs when the rule is ``second_order``, through
  their updates with the inner gradients held constant otherwise (first-order MAML's
  $\\partial\\theta'_b/\\partial\\theta = I$);
* ``"difference"``: no derivative at all, $\\sum_b (\\theta - \\theta'_b)$ (`difference`), times
  the task weight (Reptile).

A third, ``"implicit"`` (iMAML's: the query loss differentiated through the implicit function
theorem at the inner problem's solution, `metaopt.rules.imaml`), is run by its own learner on the
vectorised and the loop engine; the compiled engine cannot trace its solve.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torchopt.base import GradientTransformation

from metaopt.inner import inner_transform

__all__ = ["OUTER_RULES", "Rule", "difference", "weighted_query_loss"]

Tensors = tuple[torch.Tensor, ...]
Learned = Sequence[torch.Tensor]
Names = Sequence[str]
Diagnostic = torch.Tensor | None

#: The outer rules an engine knows (see the module's docstring).
OUTER_RULES = ("query-gradient", "difference")


def weighted_query_loss(query: torch.Tensor, weight: float | torch.Tensor) -> torch.Tensor:
    """The meta-loss the query-gradient rule differentiates: $w\\sum_b \\mathcal{L}^q_b$ of one
    task's loss or of ``[B]`` of them."""
    return query.sum() * weight


def difference(theta: Sequence[torch.Tensor], adapted: Sequence[torch.Tensor]) -> Tensors:
    """The difference rule's sums over the tasks, $\\sum_b(\\theta - \\theta'_b)$, with
    ``adapted`` stacked ``[B, ...]`` (one task as ``[1, ...]``)."""
    return tuple((p - q).sum(0) for p, q in zip(theta, adapted, strict=True))


class Rule:
    """One meta-learning algorithm, written once for every engine.

    A subclass sets the class attributes and overrides what differs from MAML's defaults:
    `transform` (the inner update), `learned` (state the outer loop meta-learns besides θ) and
    ``outer``. Its options, if any, are a dataclass ``Options`` whose fields are the keyword
    arguments of its constructor (the command line makes a flag of each).

    Attributes:
        name: The name ``--algo`` and the registry know it by.
        label: How reports and plots name it.
        color: Its colour in plots (a matplotlib colour; ``None``: one from a palette).
        outer: Its outer rule, one of `OUTER_RULES`.
        second_order: Whether the inner gradients keep their graph (the query-gradient rule
            differentiates through them).
        compiles: Whether the compiled engine can run it (its whole meta-iteration traceable).
    """

    name: str = ""
    label: str = ""
    color: str | None = None
    Options: ClassVar[type | None] = None
    outer: str = "query-gradient"
    second_order: bool = True
    compiles: bool = True

    def transform(
        self, inner_optimizer: str, inner_lr: float, learned: Sequence[torch.Tensor]
    ) -> GradientTransformation:
        """The inner update: one gradient per model parameter in ``parameters()`` order (``None``
        for one that takes no step) to one update each. ``learned`` is what `learned` created, as
        the engine holds it (parameters, or traced tensors in the compiled engine)."""
        return inner_transform(inner_optimizer, inner_lr)

    def learned(
        self, params: Sequence[torch.Tensor], adapts: Sequence[bool], inner_lr: float
    ) -> list[torch.Tensor]:
        """Initial values of the state the outer loop meta-learns besides θ (none by default),
        from the model's parameters (``parameters()`` order; read for their shapes, dtypes and
        devices) and which of them the inner loop adapts. A tensor that should not be
        meta-learned is returned with ``requires_grad=False``."""
        return []

    @property
    def exact(self) -> bool:
        """Whether the meta-gradient is the exact gradient of the meta-loss (finite differences
        of it can check it)."""
        return self.outer == "query-gradient" and self.second_order

    @property
    def solves_inner(self) -> bool:
        """Whether the inner loop solves a problem to a tolerance (iMAML's `proximal_path`)
        instead of taking the inner optimiser's steps; its batched path (``adapt_batch_path``)
        then stops each task on its own, as ``adapt`` does."""
        return False

    def check(self, learned: Sequence[torch.Tensor]) -> torch.Tensor | None:
        """A 0-d diagnostic of the learned state that the compiled engine computes inside its
        graph and hands to `warning` (Meta-SGD: its lowest rate); ``None``: none."""
        return None

    def warning(self, learned: Learned, names: Names, diagnostic: Diagnostic) -> Warning | None:
        """What to warn about the learned state after a meta-gradient, if anything (the learner
        warns once): ``learned`` as `learned` made it, ``names`` the model's parameter names,
        ``diagnostic`` `check`'s value where the compiled engine computed it (else ``None``)."""
        return None

    def describe(
        self, inner_optimizer: str, inner_lr: float, learned: Sequence[torch.Tensor]
    ) -> dict[str, Any]:
        """How this rule adapts, for reports and eval.json."""
        return {"rule": inner_optimizer, "lr": inner_lr}

    def options(self) -> dict[str, Any]:
        """The rule's options as keyword arguments of its constructor."""
        return {}

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in self.options().items())
        return f"{type(self).__name__}({fields})"
