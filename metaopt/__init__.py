"""metaopt: MAML, first-order MAML, Meta-SGD, Reptile, iMAML and ANIL (``adapt=``) on TorchOpt,
through one interface; your own algorithm by name with `register_algorithm` (or a
``metaopt.algorithms`` entry point).

>>> import metaopt
>>> algo = metaopt.MAML(model, inner_lr=0.01)            # doctest: +SKIP
>>> metrics = algo.meta_backward(tasks); outer.step()     # doctest: +SKIP
"""

from typing import TYPE_CHECKING

from metaopt._lazy import lazy_exports
from metaopt.options import ConfigError

if TYPE_CHECKING:
    from metaopt.algorithms import (
        IMAML,
        MAML,
        MetaLearner,
        MetaMetrics,
        MetaSGD,
        Reptile,
        linear_annealing,
    )
    from metaopt.curves import AdaptationCurves, evaluate
    from metaopt.inner import InnerOptimizer, learned_rate_sgd
    from metaopt.isolation import isolated
    from metaopt.registry import AlgorithmSpec, register_algorithm
    from metaopt.stats import mean_ci95
    from metaopt.task import BatchedTasks, Task
    from metaopt.training import TaskFamily, TrainConfig
    from metaopt.training.checkpoint import load_checkpoint

__version__ = "0.1.0"

# Every name but these two is imported from its module on first use (metaopt._lazy): the
# command line imports metaopt.cli, and with it this package, without torch. The training
# machinery's names come from `metaopt.training`, so that the core imports without it
# (docs/architecture.md).
__getattr__ = lazy_exports(
    __name__,
    {
        **dict.fromkeys(
            (
                "IMAML",
                "MAML",
                "MetaLearner",
                "MetaMetrics",
                "MetaSGD",
                "Reptile",
                "linear_annealing",
            ),
            "metaopt.algorithms",
        ),
        "AdaptationCurves": "metaopt.curves",
        "evaluate": "metaopt.curves",
        "InnerOptimizer": "metaopt.inner",
        "learned_rate_sgd": "metaopt.inner",
        "isolated": "metaopt.isolation",
        "AlgorithmSpec": "metaopt.registry",
        "register_algorithm": "metaopt.registry",
        "mean_ci95": "metaopt.stats",
        "BatchedTasks": "metaopt.task",
        "Task": "metaopt.task",
        "TaskFamily": "metaopt.training",
        "TrainConfig": "metaopt.training",
        "load_checkpoint": "metaopt.training.checkpoint",
    },
)

__all__ = [
    "IMAML",
    "MAML",
    "AdaptationCurves",
    "AlgorithmSpec",
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
    "evaluate",
    "isolated",
    "learned_rate_sgd",
    "linear_annealing",
    "load_checkpoint",
    "mean_ci95",
    "register_algorithm",
]
