"""The training machinery: the loop, run directories, checkpoints and resume, distribution,
configuration and the task-family registry.

It is built on the core (`metaopt.algorithms`, `metaopt.task`, ...) and never imports the tools
(`metaopt.tools`) or a domain; domains plug in through the `metaopt.task_families` entry point.
Everything outside this package imports the names below from here, not from its modules.

The modules, one job each: ``loop`` (the meta-training loop: :func:`train`), ``resuming`` (continuing
a run from a checkpoint), ``state`` (what the loop carries and a checkpoint holds), ``rundir`` (the
run directory and its files), ``signals`` (SIGINT/SIGTERM), ``build`` (algorithm and outer
optimiser from a config), ``evaluation`` (a saved run read back and evaluated), ``checkpoint``
(the file format), ``distributed`` (torchrun), ``hooks``, ``plots``, and the family protocol,
configuration and registry (``family``, ``config``, ``registry``).
"""

from metaopt.training.build import build_algorithm, build_outer_optimizer
from metaopt.training.config import resolve_config
from metaopt.training.evaluation import evaluate_run, evaluation_summary, load_run
from metaopt.training.family import (
    ConfigError,
    EvalRequest,
    RunResults,
    TaskFamily,
    TrainConfig,
    option,
)
from metaopt.training.hooks import TrainingHooks
from metaopt.training.loop import NonFiniteError, train
from metaopt.training.registry import register_family
from metaopt.training.resuming import resume
from metaopt.training.rundir import new_directory, package_versions
from metaopt.training.signals import TrainingInterrupted
from metaopt.training.state import ResumeWarning

__all__ = [
    "ConfigError",
    "EvalRequest",
    "NonFiniteError",
    "ResumeWarning",
    "RunResults",
    "TaskFamily",
    "TrainConfig",
    "TrainingHooks",
    "TrainingInterrupted",
    "build_algorithm",
    "build_outer_optimizer",
    "evaluate_run",
    "evaluation_summary",
    "load_run",
    "new_directory",
    "option",
    "package_versions",
    "register_family",
    "resolve_config",
    "resume",
    "train",
]
