"""MAML (second and first order) and Meta-SGD: the query loss after adaptation, differentiated
back to the initialisation (and Meta-SGD's learned rates)."""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torchopt.base import GradientTransformation

from metaopt.algorithms.checks import check_tasks, scalar_loss
from metaopt.algorithms.learner import MetaLearner, MetaMetrics
from metaopt.algorithms.subset import Adapt, adapt_mask
from metaopt.compiled import lowest_rate as compiled_lowest_rate
from metaopt.engine import can_vectorise, check_losses
from metaopt.inner import learned_rate_sgd, positive_rates, softplus_inverse
from metaopt.options import check_int
from metaopt.task import BatchedTasks, Task
from metaopt.unroll import checkpointed_adapt


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

    #: Checkpointed unrolling's held states (``None``: the plain unroll; also for learners
    #: pickled before the option existed).
    unroll_checkpoints: int | None = None

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
    ) -> None:
        if not isinstance(first_order, bool):
            raise TypeError(f"first_order must be a bool, got {first_order!r}")
        self.first_order = first_order
        super().__init__(model, inner_lr, inner_steps, inner_optimizer, engine, batch_norm, adapt)
        self.unroll_checkpoints = check_unroll_checkpoints(unroll_checkpoints, first_order, engine)

    def meta_backward(self, tasks: Sequence[Task], *, scale: float | None = None) -> MetaMetrics:
        """Accumulate $\\frac{1}{B}\\sum_i \\nabla \\mathcal{L}^q_i(\\theta'_i)$ into ``.grad``.

        Args:
            tasks: The meta-batch.
            scale: Weight of each task's query loss (default ``1 / len(tasks)``); a sharded
                meta-batch passes ``1 / global_batch``.
        """
        tasks, weight = check_tasks(tasks, scale)

        def vectorised() -> MetaMetrics:
            batch: BatchedTasks = tasks  # type: ignore[assignment]
            if self.unroll_checkpoints is None:
                params, fixed, before = self._adapt_vmap(
                    batch, self.inner_steps, create_graph=not self.first_order
                )
            else:
                params, fixed, before = checkpointed_adapt(
                    self.model,
                    batch,
                    self._inner_transform(),
                    self.inner_steps,
                    self.unroll_checkpoints,
                    extra=[rate for rate in self.rate_parameters() if rate.requires_grad],
                    batch_norm=self.batch_norm,
                    adapted=self.adapted,
                )
            assert before is not None
            forward = self._forward(params, fixed)
            query = check_losses(batch.query_losses(forward), len(batch), "query_losses", grad=True)
            _backward_query(query, weight)
            return MetaMetrics(before, self._support_after_vmap(batch, forward), query.detach())

        def step(task: Task, index: int, weight: float) -> tuple[torch.Tensor, ...]:
            if self.unroll_checkpoints is not None:
                reason = can_vectorise(self.model, tasks, self.batch_norm) or self._refused
                raise TypeError(
                    "unroll_checkpoints runs on the vectorised engine, but this meta-batch went "
                    f"to the loop engine ({reason}); use unroll_checkpoints=None"
                )
            before = self._inner_loop(
                task, index, self.inner_steps, create_graph=not self.first_order
            )
            query = scalar_loss(task.query_loss(self.model), "query_loss", index)
            _backward_query(query, weight)
            assert before is not None
            return before, query.detach()

        return self._run(
            tasks,
            self._compiled_or(vectorised, tasks, weight, "maml"),
            lambda: self._per_task(tasks, weight, step),  # type: ignore[arg-type]
        )

    @property
    def name(self) -> str:
        return "fomaml" if self.first_order else "maml"

    @property
    def exact_meta_gradient(self) -> bool:
        return not self.first_order

    def __repr__(self) -> str:
        checkpoints = self.unroll_checkpoints
        extra = "" if checkpoints is None else f", unroll_checkpoints={checkpoints}"
        return super().__repr__()[:-1] + f", first_order={self.first_order}{extra})"


class NegativeRateWarning(UserWarning):
    """A raw Meta-SGD rate has turned negative (said once per learner; the command line prints it
    as one ``metaopt: warning:`` line)."""


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
        if not isinstance(positive_rates, bool):
            raise TypeError(f"positive_rates must be a bool, got {positive_rates!r}")
        self.positive_rates = positive_rates
        super().__init__(
            model,
            inner_lr,
            inner_steps,
            first_order,
            "sgd",
            engine,
            batch_norm,
            adapt,
            unroll_checkpoints,
        )

    def _init_learned_state(self) -> None:
        adapts = adapt_mask(self.model, self.adapted) or [True] * len(list(self.model.parameters()))
        start = softplus_inverse(self.inner_lr) if self.positive_rates else self.inner_lr
        self.inner_lrs = nn.ParameterList(
            nn.Parameter(
                # a rate the inner loop does not use is 0 (softplus cannot reach 0: the mask
                # keeps such a parameter still whatever its rate)
                torch.full_like(p, start if a else 0.0),
                requires_grad=p.requires_grad and a,
            )
            for p, a in zip(self.model.parameters(), adapts, strict=True)
        )

    def _inner_transform(self) -> GradientTransformation:
        return learned_rate_sgd(list(self.inner_lrs), positive=self.positive_rates)

    def meta_backward(self, tasks: Sequence[Task], *, scale: float | None = None) -> MetaMetrics:
        if self.engine != "compiled":
            self._warn_negative_rates()
            return super().meta_backward(tasks, scale=scale)
        # The compiled graph computes the lowest rate: the full check only when it is negative.
        metrics = super().meta_backward(tasks, scale=scale)
        lowest = compiled_lowest_rate(self)
        if lowest is not None and lowest < 0:
            self._warn_negative_rates()
        return metrics

    def _warn_negative_rates(self) -> None:
        """Warn once when a raw learned rate has turned negative (an inner step that climbs)."""
        if self.positive_rates or self.__dict__.get("_warned_negative", False):
            return
        # One reduction and one host sync per call, the per-rate search only once one is negative
        # (a check per rate cost more than the compiled meta-iteration's own Python).
        learned = [rate for rate in self._rates() if rate.requires_grad and rate.numel()]
        with torch.no_grad():
            if not learned or torch.cat([rate.reshape(-1) for rate in learned]).min().item() >= 0:
                return
        for name, rate in zip(
            (n for n, _ in self.model.named_parameters()), self.inner_lrs, strict=True
        ):
            if rate.requires_grad and rate.numel() and bool((rate < 0).any()):
                self._warned_negative = True
                lowest = rate.detach().min().item()
                count = int((rate < 0).sum())
                warnings.warn(
                    f"Meta-SGD's learned rate of {name} has turned negative ({count} of "
                    f"{rate.numel()} entries, lowest {lowest:.4g}): those entries step up the "
                    "support loss. positive_rates=True (--positive-rates) keeps every rate "
                    "positive (α = softplus(ρ))",
                    NegativeRateWarning,
                    stacklevel=4,  # past meta_backward and its one-thread guard: the caller
                )
                return

    @property
    def name(self) -> str:
        return "metasgd"

    def meta_parameters(self) -> list[nn.Parameter]:
        """θ followed by the learned rates (α, or ρ with ``positive_rates``) of the trainable
        parameters."""
        return super().meta_parameters() + [a for a in self._rates() if a.requires_grad]

    def rate_parameters(self) -> list[nn.Parameter]:
        return self._rates()

    def _rates(self) -> list[nn.Parameter]:
        """``list(self.inner_lrs)``, read from the ParameterList's registry (its iterator indexes
        by string and costs more than a small compiled meta-iteration's own Python)."""
        return list(self.inner_lrs._parameters.values())  # type: ignore[arg-type]

    def learned_state(self) -> dict[str, Any]:
        return {"inner_lrs": [rate.detach().clone() for rate in self.inner_lrs]}

    def load_learned_state(self, state: Mapping[str, Any]) -> None:
        with torch.no_grad():
            for rate, saved in zip(self.inner_lrs, state["inner_lrs"], strict=True):
                rate.copy_(saved)

    def inner_sgd_rates(self) -> float | list[torch.Tensor] | None:
        rates = [rate.detach() for rate in self.inner_lrs]
        if not self.positive_rates:
            return rates
        adapts = [rate.requires_grad for rate in self.inner_lrs]
        return [
            a if keep else torch.zeros_like(a)
            for a, keep in zip(positive_rates(rates), adapts, strict=True)
        ]

    def describe(self) -> dict[str, Any]:
        alphas = self.inner_sgd_rates()
        assert isinstance(alphas, list)
        rates = torch.cat(
            [a.flatten() for a, r in zip(alphas, self.inner_lrs, strict=True) if r.requires_grad]
        )
        return {
            **self._adapt_report(),
            "rule": "meta-sgd (learned per-parameter rates)",
            **({"rates": "softplus (positive)"} if self.positive_rates else {}),
            "rate_mean": rates.mean().item(),
            "rate_min": rates.min().item(),
            "rate_max": rates.max().item(),
        }

    def __repr__(self) -> str:
        return super().__repr__()[:-1] + f", positive_rates={self.positive_rates})"


def _backward_query(query: torch.Tensor, weight: float) -> None:
    """MAML's outer rule, for either engine: backward of $w\\sum_i \\mathcal{L}^q_i(\\theta'_i)$
    (``query`` holds one task's loss, or ``[B]`` of them), which adds each task's meta-gradient,
    weighted by ``w``, to ``.grad`` of θ (and of Meta-SGD's α)."""
    (query.sum() * weight).backward()


def check_unroll_checkpoints(value: int | None, first_order: bool, engine: str) -> int | None:
    """``unroll_checkpoints`` validated: ``None`` or an integer ≥ 1, for a second-order unroll on
    an engine that can recompute it (the vectorised one: ``auto`` or ``vmap``)."""
    if value is None:
        return None
    check_int("unroll_checkpoints", value, 1)
    if first_order:
        raise ValueError(
            "unroll_checkpoints applies to a second-order unroll; first-order MAML keeps no graph "
            "of its inner steps (its memory does not grow with them): use unroll_checkpoints=None"
        )
    if engine not in ("auto", "vmap"):
        raise ValueError(
            f"unroll_checkpoints runs on the vectorised engine, not engine={engine!r}: use "
            "engine='auto' or 'vmap', or unroll_checkpoints=None"
        )
    return value
