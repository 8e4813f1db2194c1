"""What the supervised task families share, as the ``metaopt`` command and
[`metaopt.training.train`][metaopt.training.train] see them: `SupervisedFamily`.

``sine``, ``classify``, ``images`` and ``omniglot`` (each in its room: `supervised.sine.family`,
`supervised.classify.family`, `supervised.images.family`, `supervised.omniglot.family`) are registered in ``pyproject.toml``
under the entry-point group ``metaopt.task_families``. Each family samples `TaskBatch`
meta-batches from the ``numpy.random.Generator`` it is handed, and evaluates a trained model
against a pretrained baseline on held-out tasks (see `supervised.evaluation`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from metaopt.algorithms import MetaLearner
from metaopt.nn import per_step_batch_norm, reads_inner_step
from metaopt.training import run_device
from metaopt.training.distributed import DistInfo, map_tasks
from metaopt.training.family import (
    ConfigError,
    EvalRequest,
    RunResults,
    TaskFamily,
    TrainConfig,
)
from supervised.adaptation import adaptation_curve
from supervised.batch import TaskBatch
from supervised.config import SupervisedConfig
from supervised.evaluation import EVAL_STEPS, evaluate_learners, load_or_train_baseline
from supervised.models import seeded
from supervised.plots import plot_metric_vs_steps

__all__ = ["SPLITS", "SupervisedFamily"]

#: Held-out tasks of the cheap evaluation logged every ``eval_every`` iterations.
PERIODIC_TASKS = 100

SPLITS = ("train", "val", "test")


class SupervisedFamily(TaskFamily):
    """What the supervised families share: seeded models, evaluation against a baseline, plots.

    A subclass says how to build its network (`build_model`) and how to draw a batch of
    tasks from a split (`sample_batch`: ``"train"`` for meta-training and the baseline,
    ``"val"`` for the periodic evaluation, ``"test"`` for the final one). Families whose tasks
    come from a continuous distribution hold tasks out by seed alone; Omniglot also holds out
    classes.
    """

    config_class: ClassVar[type[TrainConfig]] = SupervisedConfig
    #: Tasks adapted together in one vmapped call during evaluation (bounds memory).
    eval_chunk: ClassVar[int] = 1000

    def build_model(self, config: Any) -> nn.Module:
        raise NotImplementedError

    def sample_batch(
        self, config: Any, rng: np.random.Generator, num_tasks: int, *, split: str = "train"
    ) -> TaskBatch:
        raise NotImplementedError

    def sample_on_device(
        self, config: Any, rng: np.random.Generator, num_tasks: int, *, split: str = "train"
    ) -> TaskBatch:
        """`sample_batch`, on the run's device (`metaopt.training.device.run_device`)."""
        return self.sample_batch(config, rng, num_tasks, split=split).to(run_device(config))

    def make_model(self, config: Any) -> nn.Module:
        """The network, initialised from ``config.seed`` alone (global RNG untouched); under
        ``--per-step-bn`` its BatchNorm layers made per-step ones for ``config.inner_steps``
        steps (`metaopt.nn.per_step_batch_norm`; the pretrained baseline keeps plain ones)."""
        model = seeded(lambda: self.build_model(config), config.seed)
        if getattr(config, "per_step_bn", False):
            per_step_batch_norm(model, config.inner_steps)
        return model

    def validate(self, config: TrainConfig) -> None:
        """``--per-step-bn`` needs a model with BatchNorm (built once here, the global random
        state left as it was)."""
        super().validate(config)
        if getattr(config, "per_step_bn", False):
            with torch.random.fork_rng(devices=[]):
                model = self.make_model(config)
            if reads_inner_step(model) is None:
                raise ConfigError(
                    f"--per-step-bn: the {self.name} family's model has no BatchNorm layer to "
                    "make per-step"
                )

    def sample_tasks(self, config: Any, rng: np.random.Generator, num_tasks: int) -> TaskBatch:
        """A meta-batch of training tasks; all randomness from ``rng``."""
        return self.sample_on_device(config, rng, num_tasks, split="train")

    def baseline(
        self, config: Any, run_dir: Path | None, group: DistInfo | None = None
    ) -> nn.Module:
        """The pretrained baseline (cached in ``run_dir/baseline.pt``)."""
        return load_or_train_baseline(
            config,
            lambda: seeded(lambda: self.build_model(config), config.baseline_seed).to(
                run_device(config)
            ),
            lambda rng, n: self.sample_on_device(config, rng, n, split="train"),
            run_dir,
            group,
        )

    def periodic_eval(
        self, algo: MetaLearner, config: Any, *, group: DistInfo | None = None
    ) -> dict[str, float]:
        """Mean metric on validation tasks before and after ``inner_steps`` adaptation steps."""
        rng = np.random.default_rng([config.eval_seed, 1])  # a stream apart from the final tasks
        batch = self.sample_on_device(config, rng, self.validation_tasks(config), split="val")
        steps = [0, config.inner_steps]
        curve = map_tasks(
            lambda part: adaptation_curve(algo, part, steps, chunk=self.eval_chunk), batch, group
        )
        before, after = curve.mean(dim=1).tolist()
        return {f"val_{self.metric}_before": before, f"val_{self.metric}_after": after}

    def validation_tasks(self, config: Any) -> int:
        """Tasks of each periodic evaluation: `PERIODIC_TASKS`, at most ``eval_tasks``."""
        return min(PERIODIC_TASKS, config.eval_tasks)

    def evaluate(
        self, algo: MetaLearner, config: Any, run_dir: Path, request: EvalRequest
    ) -> dict[str, Any]:
        """Metric after 0, 1, 5, 10, 32 steps on ``eval_tasks`` held-out tasks, vs the baseline."""
        n, steps, group = request.tasks(config), request.step_counts(EVAL_STEPS), request.group
        batch = self.sample_on_device(
            config, np.random.default_rng(config.eval_seed), n, split="test"
        )
        baseline = self.baseline(config, run_dir, group)
        result = evaluate_learners(
            algo,
            algo.untrained_baseline(baseline),
            batch,
            steps,
            metric=self.metric,
            chunk=self.eval_chunk,
            group=group,
        )
        result["baseline"]["training"] = {
            "optimizer": "adam",
            "steps": config.baseline_steps,
            "lr": config.baseline_lr,
            "tasks_per_step": config.baseline_tasks,
            "seed": config.baseline_seed,
        }
        result["eval_seed"] = config.eval_seed
        result.update(self.extra_evaluation(algo, baseline, config, request))
        return result

    def extra_evaluation(
        self, algo: MetaLearner, baseline: nn.Module, config: Any, request: EvalRequest
    ) -> dict[str, Any]:
        """Family-specific additions to eval.json, on the held-out tasks ``request`` asks for."""
        return {}

    def plot(
        self, algo: MetaLearner, config: Any, run_dir: Path, results: RunResults
    ) -> list[Path]:
        """``<metric>_vs_steps.png``: held-out metric against adaptation steps, with the baseline."""
        path = results.path(run_dir, f"{self.metric}_vs_steps.png")
        title = f"{self.name} / {config.algo}: adaptation on held-out tasks"
        return [
            plot_metric_vs_steps(
                path,
                results.evaluation,
                title=title,
                ylabel=self.metric,
                trained_steps=config.inner_steps,
            )
        ]
