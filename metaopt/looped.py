"""The loop engine: one task at a time inside [`metaopt.isolated`][metaopt.isolated], exactly as the
papers write it, for what the batched engines cannot run (tasks that are not a
[`BatchedTasks`][metaopt.BatchedTasks], modules `metaopt.engine.can_vectorise` refuses).

Like every engine it runs any rule (`metaopt.rules`): the rule's inner update steps the model's
parameters in place through [`InnerOptimizer`][metaopt.InnerOptimizer], and its outer rule turns
each adapted task into its share of the meta-gradient.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torchopt

from metaopt.batched import add_to_grad
from metaopt.checks import check_task, scalar_loss
from metaopt.engine import batch_norm_mode
from metaopt.isolation import isolated, naming_task
from metaopt.nn import at_inner_step
from metaopt.rules.base import difference, weighted_query_loss
from metaopt.task import Task

__all__ = ["inner_loop", "looped_meta_backward", "per_task"]

#: One task's step: ``(task, index, weight) -> (support loss at θ, query loss)``, both detached.
TaskStep = Callable[[Task, int, float], tuple[torch.Tensor, ...]]


def inner_loop(
    algo: Any,
    task: Task,
    index: int,
    steps: int,
    *,
    create_graph: bool,
    after: Callable[[int], None] | None = None,
) -> torch.Tensor | None:
    """Take ``steps`` inner steps of ``algo``'s inner optimiser in place, calling ``after(k)``
    after step k (1, ..., ``steps``) when given; return the first support loss (at θ), detached."""
    first = None
    for step in range(steps):
        with at_inner_step(step):  # what a per-step module reads (`metaopt.nn.at_inner_step`)
            loss = scalar_loss(task.support_loss(algo.model), "support_loss", index)
        if first is None:
            first = loss.detach()
        algo.inner_optimizer.step(loss, create_graph=create_graph)
        if after is not None:
            after(step + 1)
    return first


def looped_meta_backward(algo: Any, tasks: Sequence[Task], weight: float) -> tuple[Any, ...]:
    """``algo``'s rule on every task, one after the other: the fields of ``MetaMetrics``."""
    rule = algo.rule
    theta = [p for p in algo.model.parameters() if p.requires_grad]
    names = [n for n, p in algo.model.named_parameters() if p.requires_grad]

    step_weights = getattr(algo, "step_weights", None)

    def query_gradient(task: Task, index: int, weight: float) -> tuple[torch.Tensor, ...]:
        if step_weights is None:
            before = inner_loop(algo, task, index, algo.inner_steps, create_graph=rule.second_order)
            with at_inner_step(algo.inner_steps):
                query = scalar_loss(task.query_loss(algo.model), "query_loss", index)
            weighted_query_loss(query, weight).backward()
            assert before is not None
            return before, query.detach()
        # The multi-step loss: Σ_k w_k L^q(θ_k), the query loss after every inner step k.
        queries: list[torch.Tensor] = []

        def query_after(step: int) -> None:
            with at_inner_step(step):
                queries.append(scalar_loss(task.query_loss(algo.model), "query_loss", index))

        before = inner_loop(
            algo, task, index, algo.inner_steps, create_graph=rule.second_order, after=query_after
        )
        total = sum(w * q for w, q in zip(step_weights, queries, strict=True))
        weighted_query_loss(torch.as_tensor(total), weight).backward()
        assert before is not None
        return before, queries[-1].detach()

    def difference_rule(task: Task, index: int, weight: float) -> tuple[torch.Tensor, ...]:
        before = inner_loop(algo, task, index, algo.inner_steps, create_graph=False)
        adapted = dict(algo.model.named_parameters())
        sums = difference(
            [p.detach() for p in theta], [adapted[n].detach().unsqueeze(0) for n in names]
        )
        add_to_grad(theta, sums, weight)
        with torch.no_grad(), at_inner_step(algo.inner_steps):
            query = scalar_loss(task.query_loss(algo.model), "query_loss", index, grad=False)
        assert before is not None
        return before, query

    step = query_gradient if rule.outer == "query-gradient" else difference_rule
    return per_task(algo, tasks, weight, step)


def per_task(algo: Any, tasks: Sequence[Task], weight: float, step: TaskStep) -> tuple[Any, ...]:
    """Run ``step(task, index, weight) -> (support before, query)`` on each task inside task
    isolation; keep each task's adapted state (detached) for the lazy ``support_after``."""
    for index, task in enumerate(tasks):  # all checked before any work is done
        check_task(task, index)
    model = algo.model
    before, query, adapted = [], [], []
    with batch_norm_mode(model, algo.batch_norm), isolated(model, algo.inner_optimizer) as restore:
        for index, task in enumerate(tasks):
            with naming_task(index):  # torch's dtype errors do not say which task
                first, last = step(task, index, weight)
            adapted.append(torchopt.extract_state_dict(model, by="deepcopy"))
            restore()
            before.append(first)
            query.append(last)

    def support_after() -> torch.Tensor:
        losses = []
        with (
            batch_norm_mode(model, algo.batch_norm),
            isolated(model, algo.inner_optimizer) as restore,
            torch.no_grad(),
            at_inner_step(algo.inner_steps),
        ):
            for index, (task, state) in enumerate(zip(tasks, adapted, strict=True)):
                torchopt.recover_state_dict(model, state)
                loss = task.support_loss(model)
                losses.append(scalar_loss(loss, "support_loss", index, grad=False))
                restore()
        return torch.stack(losses)

    return torch.stack(before), support_after, torch.stack(query)
