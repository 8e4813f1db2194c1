"""``metaopt train classify``: binary classification with a random linear boundary per task.

Tasks from `supervised.classify.tasks`; the evaluation and plots are every supervised family's
(`supervised.family.SupervisedFamily`).
"""

from __future__ import annotations

import numpy as np
from torch import nn

from metaopt.nn import mlp
from supervised.batch import TaskBatch
from supervised.classify import tasks
from supervised.classify.tasks import ClassifyConfig
from supervised.config import CLASSIFY
from supervised.family import SupervisedFamily

__all__ = ["ClassifyFamily"]


class ClassifyFamily(SupervisedFamily, options=CLASSIFY):
    """Binary classification with a random linear boundary per task: a small MLP or logistic
    regression (``--model``), trained on binary cross-entropy and scored by accuracy."""

    name = "classify"
    metric = "accuracy"
    higher_is_better = True

    def build_model(self, config: ClassifyConfig) -> nn.Module:
        return mlp(config.dim, config.hidden_layers, 1, config.activation)

    def sample_batch(
        self,
        config: ClassifyConfig,
        rng: np.random.Generator,
        num_tasks: int,
        *,
        split: str = "train",
    ) -> TaskBatch:
        return tasks.sample_from_config(config, rng, num_tasks, evaluation=split != "train")
