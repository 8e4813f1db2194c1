"""The training machinery: the loop, run directories, checkpoints and resume, distribution,
configuration and the task-family registry.

It is built on the core (`metaopt.algorithms`, `metaopt.task`, ...) and never imports the tools
(`metaopt.tools`) or a domain; domains plug in through the `metaopt.task_families` entry point.
Everything outside this package imports the names below from here, not from its modules.
"""

from metaopt.training.config import resolve_config
from metaopt.training.family import ConfigError, TaskFamily, TrainConfig, option
from metaopt.training.hooks import TrainingHooks
from metaopt.training.registry import register_family
from metaopt.training.runner import (
    NonFiniteError,
    ResumeWarning,
    TrainingInterrupted,
    build_algorithm,
    build_outer_optimizer,
    evaluate_run,
    evaluation_summary,
    load_run,
    new_directory,
    package_versions,
    resume,
    train,
)

__all__ = [
    "ConfigError",
    "NonFiniteError",
    "ResumeWarning",
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
