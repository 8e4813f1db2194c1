"""Reptile: the outer gradient is the mean of θ − θ′ over the tasks, no backward through the
inner loop; and the linear annealing of the outer rate its paper uses."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from metaopt.algorithms.checks import check_tasks, scalar_loss
from metaopt.algorithms.learner import MetaLearner, MetaMetrics
from metaopt.algorithms.subset import Adapt
from metaopt.engine import check_losses
from metaopt.task import BatchedTasks, Task


class Reptile(MetaLearner):
    r"""Reptile (Nichol et al., 2018), "On First-Order Meta-Learning Algorithms".

    For each task, ``inner_steps`` plain (non-differentiable) steps on the support loss give
    $\tilde\theta_i$; the meta-gradient written into ``.grad`` is

    $$g = \frac{1}{B}\sum_i (\theta - \tilde\theta_i),$$

    so that plain SGD with learning rate ε takes the Reptile step
    $\theta \leftarrow \theta + \epsilon\,\frac{1}{B}\sum_i(\tilde\theta_i - \theta)$,
    and any other ``torch.optim`` optimiser can take it instead. One task per meta-batch is the
    serial form of the paper, several the batched form.
    [`linear_annealing`][metaopt.linear_annealing] gives the Reptile demo's linearly decaying ε.
    With ``adapt=`` (`metaopt.algorithms.subset`) a parameter the inner loop does not adapt has
    $\tilde\theta_i = \theta$, so its direction is 0.
    """

    def __init__(
        self,
        model: nn.Module,
        inner_lr: float = 0.02,
        inner_steps: int = 5,
        inner_optimizer: str = "sgd",
        engine: str = "auto",
        batch_norm: str = "running",
        adapt: Adapt = None,
    ) -> None:
        super().__init__(model, inner_lr, inner_steps, inner_optimizer, engine, batch_norm, adapt)

    @property
    def name(self) -> str:
        return "reptile"

    def meta_backward(self, tasks: Sequence[Task], *, scale: float | None = None) -> MetaMetrics:
        """Accumulate $\\frac{1}{B}\\sum_i(\\theta - \\tilde\\theta_i)$ into ``.grad``."""
        tasks, weight = check_tasks(tasks, scale)
        theta = dict(self.model.named_parameters())

        def step(task: Task, index: int, weight: float) -> tuple[torch.Tensor, ...]:
            before = self._inner_loop(task, index, self.inner_steps, create_graph=False)
            adapted = {n: p.unsqueeze(0) for n, p in self.model.named_parameters()}
            _add_reptile_direction(theta, adapted, weight)
            with torch.no_grad():
                query = scalar_loss(task.query_loss(self.model), "query_loss", index, grad=False)
            assert before is not None
            return before, query

        return self._run(
            tasks,
            self._compiled_or(
                lambda: self._meta_backward_vmap(tasks, weight),  # type: ignore[arg-type]
                tasks,
                weight,
                "reptile",
            ),
            lambda: self._per_task(tasks, weight, step),  # type: ignore[arg-type]
        )

    def _meta_backward_vmap(self, tasks: BatchedTasks, weight: float) -> MetaMetrics:
        params, fixed, before = self._adapt_vmap(tasks, self.inner_steps, create_graph=False)
        assert before is not None
        _add_reptile_direction(dict(self.model.named_parameters()), params, weight)
        forward = self._forward(params, fixed)
        with torch.no_grad():
            query = check_losses(tasks.query_losses(forward), len(tasks), "query_losses")
        return MetaMetrics(before, self._support_after_vmap(tasks, forward), query)


def _add_reptile_direction(
    theta: Mapping[str, nn.Parameter], adapted: Mapping[str, torch.Tensor], weight: float
) -> None:
    """Reptile's outer rule, for either engine: add $w\\sum_i(\\theta - \\tilde\\theta_i)$ to
    ``.grad`` of each trainable θ. ``adapted`` holds the adapted parameters with a leading task
    axis (``[B, ...]``; the loop engine passes one task as ``[1, ...]``)."""
    for name, p in theta.items():
        if p.requires_grad:
            direction = (p.detach() - adapted[name].detach()).sum(0) * weight
            p.grad = direction if p.grad is None else p.grad + direction


def linear_annealing(
    optimizer: torch.optim.Optimizer, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """The Reptile demo's outer schedule: ε_k = ε_0 (1 − k / total_steps)."""
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps!r}")
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda k: max(0.0, 1.0 - k / total_steps))
