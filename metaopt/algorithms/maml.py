"""MAML (second and first order) and Meta-SGD: the query loss after adaptation, differentiated
back to the initialisation (and Meta-SGD's learned rates)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from metaopt.algorithms.learner import MetaLearner
from metaopt.algorithms.subset import Adapt
from metaopt.rules.maml import MAMLRule, MetaSGDRule


class MAML(MetaLearner):
    r"""Model-Agnostic Meta-Learning (Finn et al., 2017), second order by default.

    For each task $\mathcal{T}_i$, ``inner_steps`` differentiable steps on the support loss,

    $$
    \theta'_i = \theta - \alpha \nabla_\theta \mathcal{L}^{s}_i(\theta)
    \quad\text{(repeated } n \text{ times)},
    $$

    then the meta-gradient $\frac{1}{B}\sum_i \nabla_\theta \mathcal{L}^{q}_i(\theta'_i)$,
    differentiating through the inner steps. With ``first_order=True`` (first-order MAML) the inner
    gradients are treated as constants, so $\partial\theta'_i/\partial\theta = I$ and the
    meta-gradient is the query gradient at $\theta'_i$, applied to θ.

    Args:
        model: The network θ parameterises.
        inner_lr: Inner learning rate α.
        inner_steps: Inner steps n per task.
        first_order: First-order MAML.
        inner_optimizer: ``"sgd"`` (TorchOpt's differentiable SGD, as ``torchopt.MetaSGD``) or
            ``"adam"`` ([`metaopt.inner.adam`][metaopt.inner.adam]: ``torchopt.MetaAdam``'s update
            with ε inside the root > 0 and the bias correction exact in the parameters' dtype).
        engine: ``"auto"``, ``"loop"``, ``"vmap"`` or ``"compiled"`` (`ENGINES`).
        batch_norm: ``"running"`` or ``"batch"``: what BatchNorm layers do during adaptation
            (`metaopt.engine.BATCH_NORM_MODES`); the same on both engines.
        adapt: The parameters the inner loop adapts (default: all): names as
            ``model.named_parameters()`` gives them or submodule prefixes (``["head"]`` is
            ANIL), or a predicate ``(name, parameter) -> bool``. The others stay at θ during
            adaptation and are still meta-learned (`metaopt.algorithms.subset`).
        unroll_checkpoints: Checkpointed unrolling (second order, vectorised engine): hold at
            most this many inner states at once and recompute the others, and each step's
            graph, in the backward pass (`metaopt.unroll`); the same meta-gradient in
            bounded memory, for more time. ``None``: the plain unroll, every step's graph kept.
    """

    def __init__(
        self,
        model: nn.Module,
        inner_lr: float = 0.01,
        inner_steps: int = 1,
        first_order: bool = False,
        inner_optimizer: str = "sgd",
        engine: str = "auto",
        batch_norm: str = "running",
        adapt: Adapt = None,
        unroll_checkpoints: int | None = None,
        lslr: bool = False,
    ) -> None:
        if not isinstance(lslr, bool):
            raise TypeError(f"lslr must be a bool, got {lslr!r}")
        rule = MAMLRule(first_order, inner_steps if lslr else 0)
        super().__init__(
            model, rule, inner_lr=inner_lr, inner_steps=inner_steps,
            inner_optimizer=inner_optimizer, engine=engine, batch_norm=batch_norm, adapt=adapt,
            unroll_checkpoints=unroll_checkpoints,
        )  # fmt: skip

    @property
    def first_order(self) -> bool:
        """First-order MAML: the inner gradients held constant."""
        return not self.rule.second_order

    @first_order.setter
    def first_order(self, value: bool) -> None:
        self.rule = type(self.rule)(**{**self.rule.options(), "first_order": value})
        self.compiled_cache.clear()

    def __repr__(self) -> str:
        checkpoints = self.unroll_checkpoints
        extra = "" if checkpoints is None else f", unroll_checkpoints={checkpoints}"
        if getattr(self.rule, "lslr_steps", 0):
            extra += ", lslr=True"
        return super().__repr__()[:-1] + f", first_order={self.first_order}{extra})"


class MetaSGD(MAML):
    r"""Meta-SGD (Li et al., 2017): MAML with a learned learning rate for every parameter entry.

    $$\theta'_i = \theta - \alpha \circ \nabla_\theta \mathcal{L}^{s}_i(\theta),$$

    where α has the shape of θ, starts at ``inner_lr`` and is meta-learned together with θ by the
    query loss. Everything else is MAML's code path. ``inner_lrs`` is an ``nn.ParameterList`` in
    the order of ``model.parameters()``. With ``adapt=`` a parameter the inner loop does not adapt
    has its rate fixed at 0 (``requires_grad=False``, not meta-learned): it takes no step.

    The rates are unconstrained by default, as in Li et al.: the outer loop may drive an entry
    below 0, where the inner step climbs the support loss; the first ``meta_backward`` that
    finds one warns once, naming the parameter and the value. With ``positive_rates=True``,
    ``inner_lrs`` holds ρ and the rates are α = softplus(ρ) = log(1 + e^ρ) > 0 (ρ starts at
    softplus⁻¹(``inner_lr``), so α starts at ``inner_lr``; the meta-gradient of ρ is that of α
    times sigmoid(ρ)). `inner_sgd_rates` gives α either way.

    Args:
        positive_rates: Learn ρ with α = softplus(ρ), so every rate stays positive.
    """

    LEARNED_KEY = "inner_lrs"

    def __init__(
        self,
        model: nn.Module,
        inner_lr: float = 0.01,
        inner_steps: int = 1,
        first_order: bool = False,
        engine: str = "auto",
        batch_norm: str = "running",
        adapt: Adapt = None,
        unroll_checkpoints: int | None = None,
        positive_rates: bool = False,
    ) -> None:
        rule = MetaSGDRule(first_order, positive_rates)
        MetaLearner.__init__(
            self, model, rule, inner_lr=inner_lr, inner_steps=inner_steps, engine=engine,
            batch_norm=batch_norm, adapt=adapt, unroll_checkpoints=unroll_checkpoints,
        )  # fmt: skip

    @property
    def positive_rates(self) -> bool:
        """The rates are α = softplus(ρ) of the learned ρ."""
        return self._rule.positive_rates

    @property
    def _rule(self) -> MetaSGDRule:
        assert isinstance(self.rule, MetaSGDRule)
        return self.rule

    @property
    def inner_lrs(self) -> nn.ParameterList:
        """The learned rates (α, or ρ with ``positive_rates``), one per model parameter in
        ``parameters()`` order."""
        return self.learned

    def rate_parameters(self) -> list[nn.Parameter]:
        return self.learned_tensors()

    def inner_sgd_rates(self) -> float | list[torch.Tensor] | None:
        return self._rule.rates(self.learned_tensors())

    def describe(self) -> dict[str, Any]:
        learned = self.learned_tensors()
        rule = self.rule.describe(self.inner_optimizer_name, self.inner_lr, learned)
        return {**self._adapt_report(), **rule}

    def __repr__(self) -> str:
        return super().__repr__()[:-1] + f", positive_rates={self.positive_rates})"


def lowest_rate(algo: MetaLearner) -> float | None:
    """Meta-SGD's lowest learned rate at ``algo``'s last compiled call, as that call's graph
    computed it (``None`` before one, or without rates or with ``positive_rates``)."""
    engine = algo.last_compiled
    return None if engine is None or engine.diagnostic is None else engine.diagnostic.item()
