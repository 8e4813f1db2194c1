"""Binary classification with a random linear decision boundary per task.

A task draws a unit normal ``w`` (uniform on the sphere in ``d`` dimensions) and an offset
``b ~ U[-offset, offset]``; inputs are ``x ~ N(0, I_d)`` and labels ``y = 1[w·x + b > 0]``. The
support set has K labelled points, the query set fresh points of the same task. The model is
logistic regression or a small MLP trained with binary cross-entropy; the reported number is
accuracy. A model that has not seen a task can do no better than the majority label, so the gap
between accuracy before and after adaptation is what meta-learning buys.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from metaopt.options import check_choice, check_int, check_real, flag
from metaopt.training.family import option
from supervised.batch import TaskBatch
from supervised.config import SupervisedConfig
from supervised.models import ACTIVATIONS

__all__ = ["MODELS", "PRESETS", "ClassifyConfig", "sample_classify"]

MODELS = ("mlp", "logistic")


@dataclass
class ClassifyConfig(SupervisedConfig):
    """Binary classification with random linear boundaries."""

    preset: str | None = option("maml", "named preset: maml")
    iterations: int = option(1000)
    inner_lr: float = option(0.1)
    dim: int = option(2, "input dimension d")
    shots: int = option(10, "labelled support points K per task")
    query: int = option(50, "query points per task")
    offset: float = option(1.0, "boundary offsets b ~ U[-offset, offset]")
    model: str = option("mlp", "mlp or logistic (a linear model)")
    hidden: int = option(40, "units per hidden layer of the MLP")
    depth: int = option(2, "hidden layers of the MLP")
    activation: str = option("relu", "hidden activation: relu or tanh")

    def validate(self) -> None:
        super().validate()
        for name in ("dim", "shots", "query", "hidden"):
            check_int(flag(name), getattr(self, name), 1)
        check_int(flag("depth"), self.depth, 0)
        check_real(flag("offset"), self.offset, low=0.0)
        check_choice(flag("model"), self.model, MODELS)
        check_choice(flag("activation"), self.activation, tuple(ACTIVATIONS))

    @property
    def hidden_layers(self) -> list[int]:
        return [] if self.model == "logistic" else [self.hidden] * self.depth


PRESETS: dict[str, dict[str, Any]] = {"maml": {}}


def sample_classify(
    rng: np.random.Generator,
    num_tasks: int,
    *,
    dim: int,
    shots: int,
    query: int,
    offset: float = 1.0,
) -> TaskBatch:
    """Draw ``num_tasks`` linear-boundary tasks, all randomness from ``rng``.

    Returns:
        A batch with ``support_x`` ``[B, K, d]``, ``support_y`` ``[B, K, 1]`` in {0, 1}
        (float32), the query set likewise, and ``info["normal"]`` ``[B, d]``, ``info["offset"]``
        ``[B]``.
    """
    normal = rng.standard_normal((num_tasks, dim))
    normal /= np.linalg.norm(normal, axis=1, keepdims=True)
    bias = rng.uniform(-offset, offset, size=num_tasks)
    support_x = rng.standard_normal((num_tasks, shots, dim))
    query_x = rng.standard_normal((num_tasks, query, dim))

    def labels(x: np.ndarray) -> np.ndarray:
        return (np.einsum("bkd,bd->bk", x, normal) + bias[:, None] > 0)[..., None]

    def tensor(a: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(a, dtype=torch.float32)

    return TaskBatch(
        support_x=tensor(support_x),
        support_y=tensor(labels(support_x)),
        query_x=tensor(query_x),
        query_y=tensor(labels(query_x)),
        loss="bce",
        info={"normal": tensor(normal), "offset": tensor(bias)},
    )


def sample_from_config(
    config: ClassifyConfig, rng: np.random.Generator, num_tasks: int, *, evaluation: bool = False
) -> TaskBatch:
    """Tasks for training or evaluation (the same distribution and sizes)."""
    return sample_classify(
        rng, num_tasks, dim=config.dim, shots=config.shots, query=config.query, offset=config.offset
    )
