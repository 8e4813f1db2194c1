"""The training machinery: the loop, run directories, checkpoints and resume, distribution,
configuration and the task-family registry.

It is built on the core (`metaopt.algorithms`, `metaopt.task`, ...) and never imports the tools
(`metaopt.tools`) or a domain; domains plug in through the `metaopt.task_families` entry point.
Everything outside this package imports the names below from here, not from its modules.

The modules, one job each: ``loop`` (the meta-training loop: [`train`][metaopt.training.train]),
``resuming`` (continuing a run from a checkpoint), ``state`` (what the loop carries and a checkpoint
holds), ``rundir`` (the run directory and its files), ``signals`` (SIGINT/SIGTERM), ``build``
(algorithm and outer optimiser from a config), ``device`` (``--device`` and ``--precision``),
``evaluation`` (a saved run read back and evaluated),
``checkpoint`` (the file format), ``distributed`` (torchrun), ``hooks``, ``progress`` (progress bars
and lines), ``tensorboard``, ``plots``, and the family protocol, configuration and registry
(``family``, ``train_config``, ``algorithm_config``: the algorithms' options among the flags,
``config``, ``registry``).
"""

from typing import TYPE_CHECKING

from metaopt._lazy import lazy_exports
from metaopt.training.family import (
    ConfigError,
    EvalRequest,
    RunResults,
    TaskFamily,
    TrainConfig,
    TruthRequest,
    option,
)

if TYPE_CHECKING:
    from metaopt.training.build import build_algorithm, build_outer_optimizer
    from metaopt.training.config import resolve_config
    from metaopt.training.device import autocast, resolve_device, run_device
    from metaopt.training.evaluation import evaluate_run, evaluation_summary, load_run
    from metaopt.training.hooks import TrainingHooks
    from metaopt.training.loop import NonFiniteError, train
    from metaopt.training.progress import ProgressLog, progress_to_stderr, with_progress
    from metaopt.training.registry import register_family
    from metaopt.training.resuming import resume
    from metaopt.training.rundir import new_directory, package_versions
    from metaopt.training.signals import TrainingInterrupted
    from metaopt.training.state import ResumeWarning
    from metaopt.training.tensorboard import TensorBoardHooks

# The names whose modules import torch are imported on first use (metaopt._lazy), so that the
# command line reads configurations and families without torch.
__getattr__ = lazy_exports(
    __name__,
    {
        "build_algorithm": "metaopt.training.build",
        "build_outer_optimizer": "metaopt.training.build",
        "resolve_config": "metaopt.training.config",
        "autocast": "metaopt.training.device",
        "resolve_device": "metaopt.training.device",
        "run_device": "metaopt.training.device",
        "evaluate_run": "metaopt.training.evaluation",
        "evaluation_summary": "metaopt.training.evaluation",
        "load_run": "metaopt.training.evaluation",
        "TrainingHooks": "metaopt.training.hooks",
        "NonFiniteError": "metaopt.training.loop",
        "train": "metaopt.training.loop",
        "ProgressLog": "metaopt.training.progress",
        "progress_to_stderr": "metaopt.training.progress",
        "with_progress": "metaopt.training.progress",
        "register_family": "metaopt.training.registry",
        "resume": "metaopt.training.resuming",
        "new_directory": "metaopt.training.rundir",
        "package_versions": "metaopt.training.rundir",
        "TrainingInterrupted": "metaopt.training.signals",
        "ResumeWarning": "metaopt.training.state",
        "TensorBoardHooks": "metaopt.training.tensorboard",
    },
)

__all__ = [
    "ConfigError",
    "EvalRequest",
    "NonFiniteError",
    "ProgressLog",
    "ResumeWarning",
    "RunResults",
    "TaskFamily",
    "TensorBoardHooks",
    "TrainConfig",
    "TrainingHooks",
    "TrainingInterrupted",
    "TruthRequest",
    "autocast",
    "build_algorithm",
    "build_outer_optimizer",
    "evaluate_run",
    "evaluation_summary",
    "load_run",
    "new_directory",
    "option",
    "package_versions",
    "progress_to_stderr",
    "register_family",
    "resolve_config",
    "resolve_device",
    "resume",
    "run_device",
    "train",
    "with_progress",
]
