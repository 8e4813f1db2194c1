"""metaopt: MAML, first-order MAML, Meta-SGD and Reptile on TorchOpt, through one interface.

>>> import metaopt
>>> algo = metaopt.MAML(model, inner_lr=0.01)            # doctest: +SKIP
>>> metrics = algo.meta_backward(tasks); outer.step()     # doctest: +SKIP
"""

from metaopt.algorithms import MAML, MetaLearner, MetaMetrics, MetaSGD, Reptile, linear_annealing
from metaopt.family import ConfigError, TaskFamily, TrainConfig
from metaopt.inner import InnerOptimizer, learned_rate_sgd
from metaopt.isolation import isolated
from metaopt.stats import mean_ci95
from metaopt.task import BatchedTasks, Task

__version__ = "0.1.0"

__all__ = [
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
