"""MAML, first-order MAML, Meta-SGD, Reptile and iMAML behind one interface; ANIL is ``adapt=``.

Every algorithm binds a model and its hyper-parameters and offers the same three calls:

* ``meta_parameters()``: what the outer optimiser updates (θ, and Meta-SGD's rates α);
* ``meta_backward(tasks)``: adapt to each task, accumulate the meta-gradient averaged over the
  tasks into ``.grad`` of the meta-parameters, restore the model, return per-task metrics;
* ``adapt(task)``: a context manager yielding the model adapted to one task (for evaluation),
  restored on exit, also when the body raises.

The outer step is left to any ``torch.optim`` optimiser, so a training step reads:

    outer.zero_grad()
    metrics = algo.meta_backward(tasks)
    outer.step()
"""

from metaopt.algorithms.imaml import IMAML
from metaopt.algorithms.learner import MetaLearner, MetaMetrics
from metaopt.algorithms.maml import MAML, MetaSGD
from metaopt.algorithms.reptile import Reptile, linear_annealing
from metaopt.options import ALGORITHMS, ENGINES  # defined without torch, for the command line
from metaopt.rules.linsolve import ConjugateGradientError
from metaopt.rules.maml import NegativeRateWarning

__all__ = [
    "ALGORITHMS",
    "ENGINES",
    "IMAML",
    "MAML",
    "ConjugateGradientError",
    "MetaLearner",
    "MetaMetrics",
    "MetaSGD",
    "NegativeRateWarning",
    "Reptile",
    "linear_annealing",
]
