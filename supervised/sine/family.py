"""``metaopt train sine``: sine regression y = A·sin(x + φ) (Finn et al. 2017; Nichol et al. 2018).

Tasks from `supervised.sine.tasks`; the evaluation is every supervised family's
(`supervised.family.SupervisedFamily`) plus the Reptile demo's 10-point protocol, and the plots
add the Reptile demo's figure (`supervised.sine.plots`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from metaopt.algorithms import MetaLearner
from metaopt.nn import mlp
from metaopt.training import run_device
from metaopt.training.family import EvalRequest, RunResults
from supervised.batch import TaskBatch
from supervised.config import SINE
from supervised.evaluation import EVAL_STEPS, evaluate_with_sgd
from supervised.family import SupervisedFamily
from supervised.sine import tasks
from supervised.sine.plots import plot_sine_adaptation
from supervised.sine.tasks import SineConfig

__all__ = ["SineFamily"]


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
        return tasks.sample_from_config(config, rng, num_tasks, evaluation=split != "train")

    def extra_evaluation(
        self, algo: MetaLearner, baseline: nn.Module, config: SineConfig, request: EvalRequest
    ) -> dict[str, Any]:
        """The Reptile demo's protocol for every run, whatever its training preset, at
        ``config.protocol_step`` (none where that is ``None``)."""
        lr = config.protocol_step
        if lr is None:
            return {}
        rng = np.random.default_rng(config.eval_seed)
        batch = tasks.sample_protocol(config, rng, request.tasks(config)).to(run_device(config))
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
        task = self.sample_on_device(
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
