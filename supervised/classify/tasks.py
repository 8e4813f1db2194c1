"""Binary classification with a random linear decision boundary per task.

A task draws a unit normal ``w`` (uniform on the sphere in ``d`` dimensions) and an offset
``b ~ U[-offset, offset]``; inputs are ``x ~ N(0, I_d)`` and labels ``y = 1[w·x + b > 0]``. The
support set has K labelled points, the query set fresh points of the same task. The model is
logistic regression or a small MLP trained with binary cross-entropy; the reported number is
accuracy. A model that has not seen a task can do no better than the majority label, so the gap
between accuracy before and after adaptation is what meta-learning buys.
"""

from __future__ import annotations

import numpy as np
import torch

from supervised.batch import TaskBatch
from supervised.config import CLASSIFY_MODELS as MODELS
from supervised.config import CLASSIFY_PRESETS as PRESETS
from supervised.config import ClassifyConfig

__all__ = ["MODELS", "PRESETS", "ClassifyConfig", "sample_classify"]

# ClassifyConfig, MODELS and PRESETS live in supervised.config, which imports no torch (the
# command line reads them); they are exported from here too.


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
