"""One meta-iteration as a pure function of tensors: what the compiled engine compiles.

`functional_meta_gradient` takes θ (and a rule's learned state), the frozen tensors and a
[`BatchedTasks`][metaopt.BatchedTasks], and returns the meta-gradient's sums over the tasks, the
support losses at θ, the query losses where the meta-gradient needs them and the adapted
parameters; `functional_metrics` computes the metrics the meta-gradient does not need from
the adapted parameters. Both run eagerly as they are (the tests call them so); the compiled
engine (`metaopt.compiled`) ``torch.compile``s them. How they compute is described there.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

import torch
from torch import nn

from metaopt.batched import Batch, functional_gradients, step_path
from metaopt.engine import batched_forward, static_layout
from metaopt.rules.base import OUTER_RULES, Rule, difference, weighted_query_loss
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
#: learned state's; times the task weight when it is given one), the support losses at θ
#: ``[B]``, the query losses ``[B]`` (the query-gradient rule's, whose meta-loss they are;
#: ``None`` for the difference rule, which does not need them) and the adapted parameters
#: ``[B, ...]`` (all detached), from which `functional_metrics` computes the metrics the
#: meta-gradient does not need when they are read; last, the rule's `Rule.check` of its learned
#: state (0-d, or ``None``).
MetaGradientResult = tuple[Tensors, torch.Tensor, torch.Tensor | None, Tensors, torch.Tensor | None]
#: What `functional_metrics` returns: the query losses (``None`` if not asked for) and the
#: support losses at the adapted parameters, each ``[B]``.
MetricsResult = tuple[torch.Tensor | None, torch.Tensor]


def functional_meta_gradient(
    model: nn.Module,
    rule: Rule,
    *,
    steps: int,
    inner_optimizer: str,
    inner_lr: float,
    learned: bool,
    batch_norm: str = "running",
) -> Callable[..., MetaGradientResult]:
    """``rule``'s meta-iteration as a pure function (eager; compile it to go fast).

    Returns ``f(theta, learned, shared, tasks, weight=None)``: ``theta`` the trainable parameters
    (detached, ``named_parameters()`` order), ``learned`` the rule's learned state, one tensor
    per model parameter (empty without), ``shared`` the frozen parameters and buffers, ``tasks``
    a [`BatchedTasks`][metaopt.BatchedTasks], ``weight`` a 0-d tensor that multiplies the
    meta-gradient's sums (``None``: the unweighted sums).

    Args:
        model: The network; read for its structure only (``functional_call`` gets the tensors).
        rule: The algorithm (`metaopt.rules.Rule`): its inner update and outer rule.
        steps: Inner steps.
        inner_optimizer: ``"sgd"`` or ``"adam"``, as the rule reads it.
        inner_lr: The inner learning rate.
        learned: Whether the rule's inner update reads learned state (built inside the traced
            function then, from the traced tensors; else once, outside it).
        batch_norm: `metaopt.engine.BATCH_NORM_MODES`.
    """
    if rule.outer not in OUTER_RULES:
        raise ValueError(
            f"the compiled engine runs the outer rules {OUTER_RULES}; got {rule.outer!r}"
        )
    layout = static_layout(model, batch_norm, "the compiled engine", "engine='vmap'")
    batch = Batch(model, batch_norm=batch_norm, adapted=None, layout=layout)
    trainable = set(layout.trainable)
    # Where each model parameter comes from: θ (None) or the shared tensors (its name); a tuple of
    # constants, so that the traced function guards on nothing here.
    sources = tuple(None if n in trainable else n for n in batch.names)
    # Built outside the traced function: TorchOpt's constructors take a lock dynamo cannot trace.
    # An update of learned state closes over tensors that are inputs, so it is built inside.
    fixed_rule = None if learned else rule.transform(inner_optimizer, inner_lr, ())
    create_graph = rule.second_order

    def adapt(
        theta: Tensors, rates: Tensors, shared: dict[str, torch.Tensor], tasks: BatchedTasks
    ) -> tuple[Tensors, torch.Tensor]:
        """The last state of the inner loop (every parameter) and the support losses at θ."""
        given = iter(theta)
        params = [next(given) if name is None else shared[name] for name in sources]
        every = batch.expand(params, len(tasks))
        transform = fixed_rule or rule.transform(inner_optimizer, inner_lr, rates)

        def support(every: Tensors, step: int) -> torch.Tensor:
            return tasks.support_losses(batch.forward(every, shared), step)

        path = step_path(
            support, every, batch.rows, transform, steps,
            create_graph=create_graph, gradients=functional_gradients,
        )  # fmt: skip
        ((last, before),) = deque(path, maxlen=1)
        assert before is not None
        return last, before

    differentiated = rule.outer == "query-gradient"

    def meta_iteration(
        theta: Tensors,
        rates: Tensors,
        shared: dict[str, torch.Tensor],
        tasks: BatchedTasks,
        weight: torch.Tensor | None = None,
    ) -> MetaGradientResult:
        if not differentiated:  # the difference needs no query loss: both metrics wait
            last, before = adapt(theta, rates, shared, tasks)
            flat = _per_task(batch, last, detach=False)
            return _weighted(difference(theta, flat), weight), before, None, flat, rule.check(rates)

        def meta_loss(
            theta: Tensors, rates: Tensors
        ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor, Tensors]]:
            last, before = adapt(theta, rates, shared, tasks)
            query = tasks.query_losses(batch.forward(last, shared))
            # unweighted here and weighted after (`_weighted`): the weight is an input tensor
            loss = weighted_query_loss(query, 1.0)
            return loss, (before, query.detach(), _per_task(batch, last, detach=True))

        (g_theta, g_rates), (before, query, adapted) = torch.func.grad(
            meta_loss, argnums=(0, 1), has_aux=True
        )(theta, rates)
        sums = _weighted(tuple(g_theta) + tuple(g_rates), weight)
        return sums, before, query, adapted, rule.check(rates)

    return meta_iteration


def _per_task(batch: Batch, every: Tensors, *, detach: bool) -> Tensors:
    """The per-task parameters of ``every`` (``[B, ...]``, trainable order)."""
    return tuple(every[i].detach() if detach else every[i] for i, _ in batch.per_task)


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
