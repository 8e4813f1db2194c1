"""One meta-iteration as a pure function of tensors: what the compiled engine compiles.

`functional_meta_gradient` takes θ (and Meta-SGD's rates), the frozen tensors and a
[`BatchedTasks`][metaopt.BatchedTasks], and returns the meta-gradient's sums over the tasks, the
support losses at θ, the query losses where the meta-gradient needs them and the adapted
parameters; `functional_metrics` computes the metrics the meta-gradient does not need from
the adapted parameters. Both run eagerly as they are (the tests call them so); the compiled
engine (`metaopt.compiled`) ``torch.compile``s them. How they compute is described there.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torchopt.base import GradientTransformation

from metaopt.engine import batched_forward, static_layout
from metaopt.inner import inner_transform, learned_rate_sgd, plain_sgd
from metaopt.task import BatchedTasks

__all__ = [
    "MetaGradientResult",
    "MetricsResult",
    "Tensors",
    "functional_meta_gradient",
    "functional_metrics",
]

Tensors = tuple[torch.Tensor, ...]
#: What the functional meta-gradient returns: the meta-gradient's sums over tasks (θ's, then the
#: rates' for Meta-SGD; times the task weight when it is given one), the support losses at θ
#: ``[B]``, the query losses ``[B]`` (MAML, whose meta-loss they are; ``None`` for Reptile, which
#: does not need them) and the adapted parameters ``[B, ...]`` (all detached), from which
#: `functional_metrics` computes the metrics the meta-gradient does not need when they are
#: read; last, Meta-SGD's lowest rate (0-d, for its negative-rate warning; ``None`` without rates
#: or with ``positive_rates``).
MetaGradientResult = tuple[Tensors, torch.Tensor, torch.Tensor | None, Tensors, torch.Tensor | None]
#: What `functional_metrics` returns: the query losses (``None`` if not asked for) and the
#: support losses at the adapted parameters, each ``[B]``.
MetricsResult = tuple[torch.Tensor | None, torch.Tensor]


def functional_meta_gradient(
    model: nn.Module,
    *,
    kind: str,
    steps: int,
    first_order: bool,
    inner_optimizer: str,
    inner_lr: float,
    learned_rates: bool,
    batch_norm: str = "running",
    positive_rates: bool = False,
) -> Callable[..., MetaGradientResult]:
    """The meta-iteration of one algorithm as a pure function (eager; compile it to go fast).

    Returns ``f(theta, rates, shared, tasks, weight=None)``: ``theta`` the trainable parameters
    (detached, ``named_parameters()`` order), ``rates`` Meta-SGD's rates for them (empty
    otherwise), ``shared`` the frozen parameters and buffers, ``tasks`` a
    [`BatchedTasks`][metaopt.BatchedTasks], ``weight`` a 0-d tensor that multiplies the
    meta-gradient's sums (``None``: the unweighted sums).

    Args:
        model: The network; read for its structure only (``functional_call`` gets the tensors).
        kind: ``"maml"`` (MAML, first-order MAML, Meta-SGD) or ``"reptile"``.
        steps: Inner steps.
        first_order: Treat the inner gradients as constants (MAML only).
        inner_optimizer: ``"sgd"`` or ``"adam"`` (ignored with ``learned_rates``).
        inner_lr: The inner learning rate.
        learned_rates: Meta-SGD's update ``θ − α ∘ g`` with the rates ``rates``.
        positive_rates: ``rates`` are ρ and α = softplus(ρ) (``MetaSGD(positive_rates=True)``).
        batch_norm: `metaopt.engine.BATCH_NORM_MODES`.
    """
    if kind not in ("maml", "reptile"):
        raise ValueError(f"kind must be 'maml' or 'reptile', got {kind!r}")
    layout = static_layout(model, batch_norm, "the compiled engine", "engine='vmap'")
    names = layout.trainable

    # Plain SGD without TorchOpt's optree mapping: fewer guards for dynamo to check per call.
    fixed_rule = (
        None
        if learned_rates
        else plain_sgd(inner_lr)
        if inner_optimizer == "sgd"
        else inner_transform(inner_optimizer, inner_lr)
    )

    def transform(rates: Tensors) -> GradientTransformation:
        # Built outside the traced function: TorchOpt's constructors take a lock dynamo cannot
        # trace. Meta-SGD's rule closes over the rates, which are inputs, so it is built inside.
        if fixed_rule is None:
            return learned_rate_sgd(rates, positive=positive_rates)
        return fixed_rule

    def forward(flat: Tensors, shared: dict[str, torch.Tensor]) -> Any:
        params = dict(zip(names, flat, strict=True))
        return batched_forward(model, params, shared, batch_norm=batch_norm, slots=layout.slots)

    def adapt(
        theta: Tensors, rates: Tensors, shared: dict[str, torch.Tensor], tasks: BatchedTasks
    ) -> tuple[Tensors, torch.Tensor]:
        num_tasks = len(tasks)
        flat = tuple(p.expand(num_tasks, *p.shape) for p in theta)
        rule = transform(rates)
        state = rule.init(flat)
        before = None
        for step in range(steps):

            def support(flat: Tensors, step: int = step) -> tuple[torch.Tensor, torch.Tensor]:
                losses = tasks.support_losses(forward(flat, shared), step)
                return losses.sum(), losses

            grads, losses = torch.func.grad(support, has_aux=True)(flat)
            if before is None:
                before = losses
            if first_order:
                grads = tuple(g.detach() for g in grads)
            updates, state = rule.update(grads, state, params=flat, inplace=False)
            flat = tuple(p + u for p, u in zip(flat, updates, strict=True))
        assert before is not None
        return flat, before.detach()

    def lowest_rate(rates: Tensors) -> torch.Tensor | None:
        # Meta-SGD's check for a negative rate, fused into the graph (eagerly, a reduction over
        # the rates and a host sync cost a tenth of a small compiled meta-iteration)
        rates = tuple(r for r in rates if r.numel())
        if positive_rates or not rates:
            return None
        return torch.cat([r.reshape(-1) for r in rates]).min()

    def maml(
        theta: Tensors,
        rates: Tensors,
        shared: dict[str, torch.Tensor],
        tasks: BatchedTasks,
        weight: torch.Tensor | None = None,
    ) -> MetaGradientResult:
        def meta_loss(
            theta: Tensors, rates: Tensors
        ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor, Tensors]]:
            flat, before = adapt(theta, rates, shared, tasks)
            query = tasks.query_losses(forward(flat, shared))
            return query.sum(), (before, query.detach(), tuple(p.detach() for p in flat))

        (g_theta, g_rates), (before, query, adapted) = torch.func.grad(
            meta_loss, argnums=(0, 1), has_aux=True
        )(theta, rates)
        sums = _weighted(tuple(g_theta) + tuple(g_rates), weight)
        return sums, before, query, adapted, lowest_rate(rates)

    def reptile(
        theta: Tensors,
        rates: Tensors,
        shared: dict[str, torch.Tensor],
        tasks: BatchedTasks,
        weight: torch.Tensor | None = None,
    ) -> MetaGradientResult:
        # Reptile's direction needs no query loss: both metrics wait until they are read.
        flat, before = adapt(theta, rates, shared, tasks)
        directions = tuple((p - q).sum(0) for p, q in zip(theta, flat, strict=True))
        return _weighted(directions, weight), before, None, flat, None

    return maml if kind == "maml" else reptile


def _weighted(sums: Tensors, weight: torch.Tensor | None) -> Tensors:
    """The meta-gradient's sums times the task weight (a 0-d tensor, so that a new weight does
    not recompile), or unweighted without one."""
    return sums if weight is None else tuple(total * weight for total in sums)


def functional_metrics(
    model: nn.Module, *, query: bool, batch_norm: str = "running"
) -> Callable[[Tensors, dict[str, torch.Tensor], BatchedTasks], MetricsResult]:
    """The metrics a meta-gradient did not compute, from the adapted parameters (pure; compile it).

    Returns ``f(adapted, shared, tasks) -> (query, support_after)``: ``adapted`` the
    ``[B, ...]`` parameters `functional_meta_gradient` returned, ``query`` the query losses
    (``None`` unless ``query``), ``support_after`` the support losses at ``adapted``.
    """
    layout = static_layout(model, batch_norm, "the compiled engine", "engine='vmap'")
    names = layout.trainable

    def metrics(
        adapted: Tensors, shared: dict[str, torch.Tensor], tasks: BatchedTasks
    ) -> MetricsResult:
        params = dict(zip(names, adapted, strict=True))
        forward = batched_forward(model, params, shared, batch_norm=batch_norm, slots=layout.slots)
        losses = tasks.query_losses(forward) if query else None
        return losses, tasks.support_losses(forward, None)

    return metrics
