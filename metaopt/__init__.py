"""metaopt: MAML, first-order MAML, Meta-SGD, Reptile, iMAML and ANIL (``adapt=``) on TorchOpt,
through one interface.

>>> import metaopt
>>> algo = metaopt.MAML(model, inner_lr=0.01)            # doctest: +SKIP
>>> metrics = algo.meta_backward(tasks); outer.step()     # doctest: +SKIP
"""

from typing import Any

from metaopt.algorithms import (
    IMAML,
    MAML,
    MetaLearner,
    MetaMetrics,
    MetaSGD,
    Reptile,
    linear_annealing,
)
from metaopt.inner import InnerOptimizer, learned_rate_sgd
from metaopt.isolation import isolated
from metaopt.options import ConfigError
from metaopt.stats import mean_ci95
from metaopt.task import BatchedTasks, Task

__version__ = "0.1.0"

# The training machinery's public names, read from `metaopt.training` on first use so that the
# core imports without it (docs/architecture.md).
_TRAINING = ("TaskFamily", "TrainConfig")


def __getattr__(name: str) -> Any:
    if name in _TRAINING:
        import metaopt.training

        return getattr(metaopt.training, name)
    raise AttributeError(f"module 'metaopt' has no attribute {name!r}")


__all__ = [
    "IMAML",
    "MAML",
    "BatchedTasks",
    "ConfigError",
    "InnerOptimizer",
    "MetaLearner",
    "MetaMetrics",
    "MetaSGD",
    "Reptile",
    "Task",
    "TaskFamily",
    "TrainConfig",
    "__version__",
    "isolated",
    "learned_rate_sgd",
    "linear_annealing",
    "mean_ci95",
]
