"""The supervised task families, as the ``metaopt`` command and
[`metaopt.training.train`][metaopt.training.train] see them.

``sine``, ``classify`` and ``omniglot`` are registered in ``pyproject.toml`` under the entry-point
group ``metaopt.task_families``. Each family samples `TaskBatch` meta-batches
from the ``numpy.random.Generator`` it is handed, and evaluates a trained model against a pretrained
baseline on held-out tasks (see `supervised.evaluation`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from torch import nn

from metaopt.algorithms import MetaLearner
from metaopt.nn import mlp
from metaopt.training.distributed import DistInfo, map_tasks
from metaopt.training.family import EvalRequest, RunResults, TaskFamily, TrainConfig
from supervised import classify, omniglot, sine
from supervised.adaptation import adaptation_curve
from supervised.batch import TaskBatch
from supervised.classify import ClassifyConfig
from supervised.config import CLASSIFY, OMNIGLOT, SINE, SupervisedConfig
from supervised.evaluation import (
    EVAL_STEPS,
    evaluate_learners,
    evaluate_with_sgd,
    load_or_train_baseline,
)
from supervised.models import conv4, seeded
from supervised.omniglot import OmniglotConfig, OmniglotData
from supervised.plots import plot_metric_vs_steps, plot_sine_adaptation
from supervised.sine import SineConfig

__all__ = ["ClassifyFamily", "OmniglotFamily", "SineFamily", "SupervisedFamily"]

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

    def make_model(self, config: Any) -> nn.Module:
        """The network, initialised from ``config.seed`` alone (global RNG untouched)."""
        return seeded(lambda: self.build_model(config), config.seed)

    def sample_tasks(self, config: Any, rng: np.random.Generator, num_tasks: int) -> TaskBatch:
        """A meta-batch of training tasks; all randomness from ``rng``."""
        return self.sample_batch(config, rng, num_tasks, split="train")

    def baseline(
        self, config: Any, run_dir: Path | None, group: DistInfo | None = None
    ) -> nn.Module:
        """The pretrained baseline (cached in ``run_dir/baseline.pt``)."""
        return load_or_train_baseline(
            config,
            lambda: seeded(lambda: self.build_model(config), config.baseline_seed),
            lambda rng, n: self.sample_batch(config, rng, n, split="train"),
            run_dir,
            group,
        )

    def periodic_eval(
        self, algo: MetaLearner, config: Any, *, group: DistInfo | None = None
    ) -> dict[str, float]:
        """Mean metric on validation tasks before and after ``inner_steps`` adaptation steps."""
        rng = np.random.default_rng([config.eval_seed, 1])  # a stream apart from the final tasks
        batch = self.sample_batch(config, rng, min(PERIODIC_TASKS, config.eval_tasks), split="val")
        steps = [0, config.inner_steps]
        curve = map_tasks(
            lambda part: adaptation_curve(algo, part, steps, chunk=self.eval_chunk), batch, group
        )
        before, after = curve.mean(dim=1).tolist()
        return {f"val_{self.metric}_before": before, f"val_{self.metric}_after": after}

    def evaluate(
        self, algo: MetaLearner, config: Any, run_dir: Path, request: EvalRequest
    ) -> dict[str, Any]:
        """Metric after 0, 1, 5, 10, 32 steps on ``eval_tasks`` held-out tasks, vs the baseline."""
        n, steps, group = request.tasks(config), request.step_counts(EVAL_STEPS), request.group
        batch = self.sample_batch(config, np.random.default_rng(config.eval_seed), n, split="test")
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


class SineFamily(SupervisedFamily, options=SINE):
    """Sine regression y = A·sin(x + φ) (Finn et al. 2017; Nichol et al. 2018)."""

    name = "sine"
    metric = "mse"
    higher_is_better = False

    def build_model(self, config: SineConfig) -> nn.Module:
        return mlp(1, [config.hidden] * config.depth, 1, config.activation)

    def sample_batch(
        self, config: SineConfig, rng: np.random.Generator, num_tasks: int, *, split: str = "train"
    ) -> TaskBatch:
        return sine.sample_from_config(config, rng, num_tasks, evaluation=split != "train")

    def extra_evaluation(
        self, algo: MetaLearner, baseline: nn.Module, config: SineConfig, request: EvalRequest
    ) -> dict[str, Any]:
        """The Reptile demo's protocol for every run, whatever its training preset, at
        ``config.protocol_step`` (none where that is ``None``)."""
        lr = config.protocol_step
        if lr is None:
            return {}
        rng = np.random.default_rng(config.eval_seed)
        batch = sine.sample_protocol(config, rng, request.tasks(config))
        last = config.protocol_steps
        # --steps given: exactly those; else the family's up to the protocol's own count.
        steps = request.step_counts(EVAL_STEPS)
        protocol_steps = (
            sorted(set(steps))
            if request.steps is not None
            else sorted({s for s in steps if s <= last} | {last})
        )
        block = evaluate_with_sgd(
            algo.model,
            baseline,
            batch,
            protocol_steps,
            lr=lr,
            metric="mse",
            chunk=self.eval_chunk,
            group=request.group,
        )
        block["description"] = (
            f"{config.protocol_points} support points of the {config.protocol_grid}-point grid, "
            f"plain SGD at lr {lr:g}, MSE on the whole grid"
        )
        return {"protocol_10pt": block}

    def plot(
        self, algo: MetaLearner, config: SineConfig, run_dir: Path, results: RunResults
    ) -> list[Path]:
        """The metric plot, and ``adaptation.png`` (the Reptile demo's figure) on a held-out task."""
        paths = super().plot(algo, config, run_dir, results)
        task = self.sample_batch(
            config, np.random.default_rng([config.eval_seed, 3]), 1, split="test"
        )[0]
        baseline = algo.untrained_baseline(self.baseline(config, run_dir))
        paths.append(
            plot_sine_adaptation(
                results.path(run_dir, "adaptation.png"),
                algo,
                task,
                x_range=(config.x_min, config.x_max),
                baseline=baseline,
                title=f"sine / {config.algo}",
            )
        )
        return paths


class ClassifyFamily(SupervisedFamily, options=CLASSIFY):
    """Binary classification with a random linear boundary per task."""

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
        return classify.sample_from_config(config, rng, num_tasks, evaluation=split != "train")


class OmniglotFamily(SupervisedFamily, options=OMNIGLOT):
    """N-way K-shot Omniglot from a local folder (Lake et al., 2015)."""

    name = "omniglot"
    metric = "accuracy"
    higher_is_better = True
    eval_chunk = 10  # measured: larger vmapped chunks of conv nets are slower on CPU

    def __init__(self) -> None:
        # Decoding the PNGs is the slow part; one family instance reads a folder once.
        self._loaded: dict[tuple[str, int], OmniglotData] = {}

    def data(self, config: OmniglotConfig) -> OmniglotData:
        """The images of ``config.data_dir`` (with ``--download``, missing subsets are fetched first)."""
        root = Path(config.data_dir)
        key = (str(root.resolve()), config.image_size)
        if key not in self._loaded:
            if config.download and not all((root / s).is_dir() for s in omniglot.SUBSETS):
                omniglot.download_omniglot(root)
            self._loaded[key] = omniglot.load_omniglot(root, config.image_size)
        return self._loaded[key]

    def validate(self, config: TrainConfig) -> None:
        """Read the folder now, so that a missing or malformed one fails before training starts."""
        assert isinstance(config, OmniglotConfig)
        omniglot.check_episodes(config, self.data(config), Path(config.data_dir))

    def characters(self, config: OmniglotConfig, split: str) -> np.ndarray:
        """Indices of the characters of ``split`` ("train", "val" or "test")."""
        data = self.data(config)
        omniglot.check_episodes(config, data, Path(config.data_dir))
        parts = omniglot.split_characters(
            data.num_characters, config.train_classes, config.val_classes, config.split_seed
        )
        return dict(zip(SPLITS, parts, strict=True))[split]

    def build_model(self, config: OmniglotConfig) -> nn.Module:
        return conv4(config.ways, filters=config.filters, image_size=config.image_size)

    def sample_batch(
        self,
        config: OmniglotConfig,
        rng: np.random.Generator,
        num_tasks: int,
        *,
        split: str = "train",
    ) -> TaskBatch:
        return omniglot.sample_episodes(
            rng,
            self.data(config),
            self.characters(config, split),
            num_tasks,
            ways=config.ways,
            shots=config.shots,
            query_shots=config.query_shots,
            rotations=config.rotation_count,
            minibatch=config.minibatch if split == "train" else 0,
        )

    def periodic_eval(
        self, algo: MetaLearner, config: OmniglotConfig, *, group: DistInfo | None = None
    ) -> dict[str, float]:
        if config.val_classes == 0:
            return {}
        return super().periodic_eval(algo, config, group=group)
