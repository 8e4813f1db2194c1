"""Reptile: the outer gradient is the mean of θ − θ′ over the tasks, no backward through the
inner loop; and the linear annealing of the outer rate its paper uses."""

from __future__ import annotations

import torch
from torch import nn

from metaopt.algorithms.learner import MetaLearner
from metaopt.algorithms.subset import Adapt
from metaopt.rules.reptile import ReptileRule


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
        super().__init__(
            model, ReptileRule(), inner_lr=inner_lr, inner_steps=inner_steps,
            inner_optimizer=inner_optimizer, engine=engine, batch_norm=batch_norm, adapt=adapt,
        )  # fmt: skip


def linear_annealing(
    optimizer: torch.optim.Optimizer, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """The Reptile demo's outer schedule: ε_k = ε_0 (1 − k / total_steps)."""
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps!r}")
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda k: max(0.0, 1.0 - k / total_steps))
