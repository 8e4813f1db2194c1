"""The fully connected network every domain builds its models from, and its activations by name;
and MAML++'s per-step BatchNorm, with the inner-step index the engines set for it.

The supervised families' regressors and classifiers (`mlp` with an output layer) and the RL
policies' torsos (`mlp` without one) are the same stack of ``nn.Linear`` layers, each followed by
the hidden activation. Layers are created in order, input to output, so a network seeded the same
way starts from the same weights whoever builds it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "ACTIVATIONS",
    "PerStepBatchNorm",
    "at_inner_step",
    "inner_step_index",
    "mlp",
    "per_step_batch_norm",
    "reads_inner_step",
]

#: The number of inner steps taken by the parameters a forward runs with (0: θ itself).
_INNER_STEP: ContextVar[int] = ContextVar("metaopt_inner_step", default=0)

#: Hidden activations by name (the domains' configs list the same names without importing torch).
ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "tanh": nn.Tanh}


def mlp(
    in_features: int,
    hidden: Sequence[int],
    out_features: int | None = None,
    activation: str = "relu",
) -> nn.Sequential:
    """A fully connected network ``in -> hidden[0] -> ... -> out`` with ``activation`` after every
    hidden layer.

    The MAML sine network is ``mlp(1, [40, 40], 1, "relu")`` (Finn et al., 2017); the Reptile demo's
    is ``mlp(1, [64, 64], 1, "tanh")`` (Nichol et al., 2018, whose demo notes that tanh works
    slightly better than the paper's ReLU). ``hidden=[]`` is a linear (logistic) model.
    ``out_features=None`` ends at the last hidden activation: a torso for heads to read (with
    ``hidden=[]`` too, the identity).
    """
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {', '.join(ACTIVATIONS)}; got {activation!r}")
    layers: list[nn.Module] = []
    width = in_features
    for size in hidden:
        layers += [nn.Linear(width, size), ACTIVATIONS[activation]()]
        width = size
    if out_features is not None:
        layers.append(nn.Linear(width, out_features))
    return nn.Sequential(*layers)


@contextmanager
def at_inner_step(step: int) -> Iterator[None]:
    """Forwards inside run with parameters that have taken ``step`` inner steps: what a
    `PerStepBatchNorm` reads. The engines set it around every forward of an adaptation (the
    support loss at step k, the query loss after k steps); outside any, it is 0."""
    token = _INNER_STEP.set(step)
    try:
        yield
    finally:
        _INNER_STEP.reset(token)


def inner_step_index() -> int:
    """The inner step `at_inner_step` set (0 outside one)."""
    return _INNER_STEP.get()


class PerStepBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm with its own affine parameters and running statistics for every inner step:
    MAML++'s per-step batch normalisation (Antoniou et al., 2019, §4, "Per-Step Batch
    Normalization Running Statistics" and "Per-Step Batch Normalization Weights and Biases").

    ``weight``, ``bias``, ``running_mean`` and ``running_var`` are ``[steps + 1, C]``: a forward
    with parameters that have taken k inner steps (`at_inner_step`) uses row min(k, steps), so
    the support loss of step k (k = 0, ..., K−1) and the query loss after K steps each have
    their own row, and an evaluation with more steps than training reuses the last. (MAML++'s
    code keeps K rows and evaluates the query after step k with row k−1; here the row is the
    number of steps the parameters have taken.) Any input BatchNorm1d/2d/3d takes.
    """

    def __init__(self, num_features: int, steps: int, **kwargs: object) -> None:
        super().__init__(num_features, **kwargs)  # type: ignore[arg-type]
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
        if self.momentum is None:
            raise ValueError(
                "PerStepBatchNorm needs a momentum (a cumulative average is one count)"
            )
        self.steps = steps
        rows = steps + 1
        with torch.no_grad():
            if self.affine:
                self.weight = nn.Parameter(self.weight.detach().repeat(rows, 1))
                self.bias = nn.Parameter(self.bias.detach().repeat(rows, 1))
            if self.running_mean is not None and self.running_var is not None:
                self.running_mean = self.running_mean.repeat(rows, 1)
                self.running_var = self.running_var.repeat(rows, 1)

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        self._check_input_dim(input)
        row = min(inner_step_index(), self.steps)
        tracking = self.track_running_stats and self.running_mean is not None
        if self.training and tracking and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
        batch_statistics = self.training or not tracking
        mean = self.running_mean[row] if tracking and self.running_mean is not None else None
        var = self.running_var[row] if tracking and self.running_var is not None else None
        return F.batch_norm(
            input,
            mean,
            var,
            self.weight[row] if self.weight is not None else None,
            self.bias[row] if self.bias is not None else None,
            batch_statistics,
            self.momentum or 0.0,
            self.eps,
        )

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, steps={self.steps}"


def per_step_batch_norm(model: nn.Module, steps: int) -> nn.Module:
    """``model`` with every BatchNorm layer replaced, in place, by a `PerStepBatchNorm` for
    ``steps`` inner steps whose every row starts as the layer was (its affine parameters,
    running statistics and mode). Returns ``model``."""
    for name, child in list(model.named_children()):
        if isinstance(child, nn.modules.batchnorm._BatchNorm) and not isinstance(
            child, PerStepBatchNorm
        ):
            new = PerStepBatchNorm(
                child.num_features,
                steps,
                eps=child.eps,
                momentum=child.momentum,
                affine=child.affine,
                track_running_stats=child.track_running_stats,
                device=child.weight.device if child.weight is not None else None,
                dtype=child.weight.dtype if child.weight is not None else None,
            )
            with torch.no_grad():
                for attr in ("weight", "bias", "running_mean", "running_var"):
                    old = getattr(child, attr)
                    if old is not None:
                        getattr(new, attr).copy_(old.expand_as(getattr(new, attr)))
                if child.num_batches_tracked is not None and new.num_batches_tracked is not None:
                    new.num_batches_tracked.copy_(child.num_batches_tracked)
            new.train(child.training)
            setattr(model, name, new)
        else:
            per_step_batch_norm(child, steps)
    return model


def reads_inner_step(model: nn.Module) -> str | None:
    """The name of the first submodule of ``model`` whose forward reads the inner-step index
    (a `PerStepBatchNorm`), or ``None``."""
    for name, module in model.named_modules():
        if isinstance(module, PerStepBatchNorm):
            return name or "the model"
    return None
