"""The query metric of held-out tasks after several numbers of adaptation steps, for evaluation.

[`metaopt.MetaLearner.adapt`][metaopt.MetaLearner.adapt] adapts one task at a time through TorchOpt,
exact but a Python loop per task and per step. The core's vectorised engine adapts a whole stacked
`TaskBatch` at once with the algorithm's own inner update
(``θ'_{k+1} = θ'_k − α ∘ ∇L^s(θ'_k)``, α the scalar ``inner_lr`` or Meta-SGD's learned rates), and
[`adapt_batch_path`][metaopt.MetaLearner.adapt_batch_path] hands over the adapted parameters after
every step of one adaptation. `adaptation_curve` uses that path for (learned-rate) SGD on full-batch
tasks and ``algo.adapt`` otherwise (other inner optimisers, minibatched support sets, which the
published evaluations ran task by task); the tests check that both give the same numbers.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import torch
from torch import nn
from torch.func import vmap

from metaopt.algorithms import MAML, MetaLearner
from supervised.batch import TaskBatch, task_metric

__all__ = ["adaptation_curve", "batched_curve", "loop_curve", "sgd_curve"]


def batched_curve(
    algo: MetaLearner, batch: TaskBatch, steps: Sequence[int], *, chunk: int = 1000
) -> torch.Tensor:
    """Query metric of every task after each number of ``algo``'s inner steps in ``steps``:
    ``[len(steps), B]``, float64, from one batched adaptation per chunk of ``chunk`` tasks
    (which bounds memory for image tasks). The model is not touched.
    """
    wanted = set(steps)
    rows: list[torch.Tensor] = []
    for start in range(0, batch.num_tasks, chunk):
        part = batch.select(slice(start, start + chunk))
        found: dict[int, torch.Tensor] = {}
        for step, forward in enumerate(algo.adapt_batch_path(part, max(wanted))):
            if step in wanted:
                with torch.no_grad():
                    outputs = forward(part.query_x)
                    found[step] = vmap(partial(task_metric, part.loss))(outputs, part.query_y)
        rows.append(torch.stack([found[s] for s in steps]))
    return torch.cat(rows, dim=1).to(torch.float64)


def sgd_curve(
    model: nn.Module, batch: TaskBatch, steps: Sequence[int], lr: float, *, chunk: int = 1000
) -> torch.Tensor:
    """`batched_curve` of ``model`` fine-tuned by plain SGD at ``lr`` (a fixed protocol,
    whatever algorithm trained the model)."""
    return batched_curve(MAML(model, inner_lr=lr), batch, steps, chunk=chunk)


def loop_curve(algo: MetaLearner, batch: TaskBatch, steps: Sequence[int]) -> torch.Tensor:
    """Same as `batched_curve`, task by task through ``algo.adapt`` (any inner optimiser)."""
    evaluation = batch.select(slice(None))  # fresh tasks: adaptation must not move the cursors
    values = torch.empty(len(steps), evaluation.num_tasks, dtype=torch.float64)
    for j, task in enumerate(evaluation):
        for i, step in enumerate(steps):
            with algo.adapt(task, steps=step) as model:
                values[i, j] = task.query_metric(model)
    return values


def adaptation_curve(
    algo: MetaLearner, batch: TaskBatch, steps: Sequence[int], *, chunk: int = 1000
) -> torch.Tensor:
    """Query metric after each number of ``algo``'s own adaptation steps: ``[len(steps), B]``.

    Batched (`batched_curve`) when ``algo`` adapts by (learned-rate) SGD or by a solve whose
    batched path stops each task as ``algo.adapt`` does (iMAML's, ``rule.solves_inner``), and the
    batch is full-batch; ``algo.adapt`` (`loop_curve`) otherwise.
    """
    batched = algo.inner_sgd_rates() is not None or algo.rule.solves_inner
    if not batched or batch.minibatch is not None:
        return loop_curve(algo, batch, steps)
    return batched_curve(algo, batch, steps, chunk=chunk)
