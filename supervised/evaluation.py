"""Held-out evaluation of the supervised families: meta-learned model against a pretrained baseline.

For ``n`` held-out tasks (drawn from ``config.eval_seed`` alone, so every run is scored on the same
tasks) the query metric is measured after 0, 1, 5, 10 and 32 adaptation steps on each task's
support set, for

* the meta-learned model, adapted by its algorithm's own rule (SGD or Adam at ``inner_lr``, or
  Meta-SGD's learned rates), and
* the pretrained baseline of Finn et al. (2017): the same network trained by ordinary supervised
  learning on tasks pooled together (`train_baseline`), fine-tuned with the inner optimiser
  at ``inner_lr`` (plain SGD at ``inner_lr`` when the algorithm is Meta-SGD; the step size is not
  tuned, unlike in the paper).

Every number is a mean over tasks with the half-width of its 95% confidence interval,
``1.96 · sd / sqrt(n)``. Comparisons (after vs before adaptation, meta-learned vs baseline) are
paired: the interval is that of the mean per-task difference, which is the one that resolves the
effect when both are measured on the same tasks.
"""

from __future__ import annotations

import dataclasses
import io
import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from metaopt.algorithms import MetaLearner
from metaopt.stats import task_summary
from metaopt.training import TrainConfig, with_progress
from metaopt.training.checkpoint import atomic_write_bytes
from metaopt.training.distributed import DistInfo, map_tasks, on_main
from supervised.adaptation import adaptation_curve, sgd_curve
from supervised.batch import TaskBatch, task_loss
from supervised.config import SupervisedConfig

__all__ = [
    "DIVERGENCE_FACTOR",
    "EVAL_STEPS",
    "INTERVAL",
    "LOSSES",
    "curve_summary",
    "evaluate_learners",
    "evaluate_with_sgd",
    "load_or_train_baseline",
    "mark_diverged",
    "meta_vs_baseline",
    "train_baseline",
]

#: Adaptation steps at which the held-out metric is reported.
EVAL_STEPS = (0, 1, 5, 10, 32)

INTERVAL = (
    "mean over held-out tasks ± half-width of its 95% confidence interval, 1.96·sd/sqrt(n); "
    "differences (after − before adaptation, meta-learned − baseline) are paired per task"
)

SampleFn = Callable[[np.random.Generator, int], TaskBatch]

#: Metrics that are losses (lower is better), for which a blow-up counts as divergence.
LOSSES = ("mse",)

#: A task's loss diverged after k adaptation steps when it is not finite or above this multiple of
#: its loss before adaptation: a loss a hundred times the unadapted model's is no adapted model's,
#: whether or not later steps bring it back. SGD that diverges grows geometrically (in the
#: quickstart's sine 10-point protocol, SGD at 0.02 on the default model, 7 of 600 tasks pass 10⁵×
#: and end non-finite or near 10⁹×; 2 others pass 100× for a few steps and recover to ~2×).
DIVERGENCE_FACTOR = 100.0


def mark_diverged(steps: Sequence[int], curve: torch.Tensor) -> torch.Tensor:
    """``curve`` (``[len(steps), B]``, a loss) with +inf wherever a task diverged: a loss above
    `DIVERGENCE_FACTOR` times the task's loss at step 0, so that `curve_summary`
    counts it in ``diverged`` and averages only the others. Unchanged without a step 0."""
    if 0 not in steps:
        return curve
    before = curve[list(steps).index(0)]
    return torch.where(curve > DIVERGENCE_FACTOR * before, torch.inf, curve)


def curve_summary(steps: Sequence[int], curve: torch.Tensor) -> dict[str, dict[str, float]]:
    """``{"<steps>": {"mean", "ci95"}}`` for a ``[len(steps), B]`` curve."""
    return {str(s): task_summary(row) for s, row in zip(steps, curve, strict=True)}


def train_baseline(
    model: nn.Module, sample: SampleFn, *, steps: int, lr: float, tasks: int, seed: int
) -> nn.Module:
    """Train ``model`` in place by ordinary supervised learning on pooled tasks.

    Each of ``steps`` Adam steps draws ``tasks`` fresh tasks (from ``seed``) and descends the loss
    over all their support and query points together, as if they were one data set: the
    "pretrained" network of Finn et al. (2017), section 5.1.
    """
    rng = np.random.default_rng(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in with_progress(range(steps), total=steps, desc="baseline (pretrained network)"):
        batch = sample(rng, tasks)
        x = torch.cat([batch.support_x, batch.query_x], dim=1).flatten(0, 1)
        y = torch.cat([batch.support_y, batch.query_y], dim=1).flatten(0, 1)
        optimizer.zero_grad(set_to_none=True)
        task_loss(batch.loss, model(x), y).backward()
        optimizer.step()
    return model


def load_or_train_baseline(
    config: SupervisedConfig,
    make_model: Callable[[], nn.Module],
    sample: SampleFn,
    run_dir: Path | None,
    group: DistInfo | None = None,
) -> nn.Module:
    """The run's baseline: loaded from ``run_dir/baseline.pt`` when it was trained with the same
    settings, otherwise trained (`train_baseline`) and saved there.

    Under torchrun, rank 0 of ``group`` alone loads or trains (and writes) it and hands its
    weights to the other ranks (`metaopt.training.distributed.on_main`).
    """
    model = make_model()
    model.load_state_dict(on_main(lambda: _load_or_train(model, config, sample, run_dir), group))
    return model


def _load_or_train(
    model: nn.Module, config: SupervisedConfig, sample: SampleFn, run_dir: Path | None
) -> dict[str, torch.Tensor]:
    """``model``'s weights, loaded from the cache or trained in place (and cached)."""
    # The key: every field a family adds to TrainConfig (the task distribution, the network, the
    # baseline's budget) except those that only concern evaluation; TrainConfig's own fields
    # (the algorithm, the outer loop, seeds of meta-training) do not change the baseline.
    ignored = {f.name for f in dataclasses.fields(TrainConfig)} | set(config.EVALUATION_ONLY)
    settings = {k: v for k, v in config.to_dict().items() if k not in ignored}
    path = None if run_dir is None else Path(run_dir) / "baseline.pt"
    if path is not None and path.is_file():
        try:
            cached = torch.load(path, map_location="cpu", weights_only=True)
            if json.loads(cached["settings"]) == json.loads(json.dumps(settings)):
                model.load_state_dict(cached["state_dict"])  # checks that it fits the network
                return model.state_dict()
        except Exception:  # a cache: one that cannot be read (cut short, foreign) is rebuilt
            pass
    train_baseline(
        model,
        sample,
        steps=config.baseline_steps,
        lr=config.baseline_lr,
        tasks=config.baseline_tasks,
        seed=config.baseline_seed,
    )
    if path is not None:  # atomically: a kill leaves the old cache or the new one, never half
        buffer = io.BytesIO()
        torch.save({"state_dict": model.state_dict(), "settings": json.dumps(settings)}, buffer)
        atomic_write_bytes(path, buffer.getvalue())
    return model.state_dict()


def meta_vs_baseline(
    steps: Sequence[int],
    meta: torch.Tensor,
    baseline: torch.Tensor,
    *,
    metric: str,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The eval.json block for one protocol: both curves and their paired differences. For a
    loss (`LOSSES`), a task that blew up is counted as diverged (`mark_diverged`)."""
    if metric in LOSSES:
        meta, baseline = mark_diverged(steps, meta), mark_diverged(steps, baseline)
    result: dict[str, Any] = {
        "metric": metric,
        "tasks": int(meta.shape[1]),
        "steps": list(steps),
        "by_steps": curve_summary(steps, meta),
        "baseline": {"by_steps": curve_summary(steps, baseline)},
        "meta_minus_baseline": curve_summary(steps, meta - baseline),
    }
    if 0 in steps:
        before = steps.index(0)
        result["after_minus_before"] = curve_summary(steps, meta - meta[before])
        result["baseline"]["after_minus_before"] = curve_summary(steps, baseline - baseline[before])
    result["interval"] = INTERVAL
    if metric in LOSSES:
        result["divergence"] = (
            f"a task diverged after k steps when its {metric} is not finite or above "
            f"{DIVERGENCE_FACTOR:g} times its {metric} before adaptation; means and intervals "
            "are then those of the other tasks ('finite'), with the count in 'diverged'"
        )
    result.update(extra or {})
    return result


def evaluate_learners(
    algo: MetaLearner,
    baseline: MetaLearner,
    batch: TaskBatch,
    steps: Sequence[int],
    *,
    metric: str,
    chunk: int,
    group: DistInfo | None,
) -> dict[str, Any]:
    """Meta-learned and baseline curves on ``batch``, each adapted by its learner's rule; each
    rank of ``group`` adapts to its share of the tasks."""
    meta = map_tasks(lambda part: adaptation_curve(algo, part, steps, chunk=chunk), batch, group)
    base = map_tasks(
        lambda part: adaptation_curve(baseline, part, steps, chunk=chunk), batch, group
    )
    return meta_vs_baseline(
        steps,
        meta,
        base,
        metric=metric,
        extra={"adaptation": algo.describe(), "baseline_adaptation": baseline.describe()},
    )


def evaluate_with_sgd(
    model: nn.Module,
    baseline: nn.Module,
    batch: TaskBatch,
    steps: Sequence[int],
    *,
    lr: float,
    metric: str,
    chunk: int,
    group: DistInfo | None,
) -> dict[str, Any]:
    """Both models fine-tuned by plain SGD at one fixed ``lr`` (a fixed protocol)."""
    meta = map_tasks(lambda part: sgd_curve(model, part, steps, lr, chunk=chunk), batch, group)
    base = map_tasks(lambda part: sgd_curve(baseline, part, steps, lr, chunk=chunk), batch, group)
    return meta_vs_baseline(
        steps, meta, base, metric=metric, extra={"adaptation": {"rule": "sgd", "lr": lr}}
    )
