"""The best checkpoint: the parameters that scored best on validation tasks, kept as ``best.pt``.

Few-shot results are reported for the model selected on validation classes, not for the last
one. A family whose tasks hold out such classes names the metric that selects
([`TaskFamily.selection_metric`][metaopt.training.TaskFamily.selection_metric], e.g.
``val_accuracy_after``: the score after the trained inner steps; larger is better when the
family's ``higher_is_better``). The loop validates every ``eval_every`` iterations and after the
last one; each time the score beats the best so far (strictly: a tie keeps the earlier
iteration), it keeps a copy of the algorithm's state (`Best`) and writes ``best.pt`` atomically,
and the metrics row records ``best_iteration`` and ``best_<metric>``.

``best.pt`` is a checkpoint file (`metaopt.training.checkpoint`) holding the family, config,
iteration, algorithm state and ``selection`` (iteration, metric, value): what
[`load_run`][metaopt.training.load_run] reads, but no optimiser or random state, so a run cannot
resume from it. Every ``checkpoint.pt`` carries the best so far, and a resume writes ``best.pt``
again from the checkpoint it continues from, as it cuts ``metrics.jsonl`` back: a ``best.pt``
written after that checkpoint is replaced, and found again when the run passes that iteration.

The final evaluation and ``metaopt eval`` use ``best.pt`` when the run has one
(``metaopt eval --checkpoint last``: the last parameters), say so on stderr, and name what they
used in eval.json's ``selected`` block (`selected_block`).
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from metaopt.training.checkpoint import save_checkpoint
from metaopt.training.family import ConfigError, TaskFamily, TrainConfig
from metaopt.training.rundir import BEST, CHECKPOINT
from metaopt.training.state import Best, Run, algorithm_state, load_algorithm_state

__all__ = [
    "CHOICES",
    "checkpoint_to_evaluate",
    "describe",
    "keep_best",
    "selected_block",
    "use_best",
    "validates",
    "write_best_file",
]

#: What ``metaopt eval --checkpoint`` takes: the selected parameters, or the last ones.
CHOICES = ("best", "last")


def validates(run: Run, iteration: int) -> bool:
    """Whether the loop evaluates on validation tasks after ``iteration``: every ``eval_every``
    iterations, and after the last one when the family selects a checkpoint (so that a run
    shorter than ``eval_every`` still has one)."""
    every = run.config.eval_every
    if every and iteration % every == 0:
        return True
    last = iteration == run.config.iterations
    return last and run.family.selection_metric(run.config) is not None


def keep_best(run: Run, row: Mapping[str, Any]) -> dict[str, Any]:
    """After a validation at ``run.iteration`` whose numbers are in ``row``: keep the parameters
    (and write ``best.pt``) when the family's selection metric beats the best so far. Returns
    what the metrics row records of the best so far (nothing for a family that does not select).

    A non-finite score never selects.
    """
    metric = run.family.selection_metric(run.config)
    if metric is None:
        return {}
    value = row.get(metric)
    if isinstance(value, int | float) and math.isfinite(value) and _improves(run, float(value)):
        state = copy.deepcopy(algorithm_state(run.algo))  # the live tensors move on
        run.best = Best(run.iteration, metric, float(value), state)
        if run.dist.is_main:
            write_best_file(run)
    if run.best is None:
        return {}
    return {"best_iteration": run.best.iteration, f"best_{run.best.metric}": run.best.value}


def _improves(run: Run, value: float) -> bool:
    if run.best is None:
        return True
    if run.family.higher_is_better:
        return value > run.best.value
    return value < run.best.value


def write_best_file(run: Run) -> None:
    """Write ``run.best`` to ``best.pt`` atomically; remove ``best.pt`` when there is none (a
    resume from a checkpoint older than the file)."""
    path = run.run_dir / BEST
    if run.best is None:
        path.unlink(missing_ok=True)
        return
    save_checkpoint(
        path,
        {
            "family": run.family.name,
            "config": json.dumps(run.config.to_dict()),
            "iteration": run.best.iteration,
            "algorithm": run.best.algorithm,
            "selection": run.best.summary(),
            "versions": run.versions,
            "threads": torch.get_num_threads(),
        },
    )


def use_best(run: Run) -> dict[str, Any] | None:
    """Before the final evaluation: put the best parameters into ``run.algo`` (training is over)
    and return eval.json's ``selected`` block; ``None`` for a family that does not select."""
    if run.family.selection_metric(run.config) is None:
        return None
    if run.best is None:  # no validation score was finite
        return selected_block(run.family, CHECKPOINT, run.iteration, None)
    load_algorithm_state(run.algo, run.best.algorithm)
    return selected_block(run.family, BEST, run.best.iteration, run.best.summary())


def selected_block(
    family: TaskFamily, checkpoint: str, iteration: int, selection: Mapping[str, Any] | None
) -> dict[str, Any]:
    """eval.json's ``selected``: the checkpoint file evaluated, its iteration and, for
    ``best.pt``, its validation score (``val_<metric>``, e.g. ``val_accuracy``) and the metrics
    row key that selected it (``selected_by``)."""
    block: dict[str, Any] = {"checkpoint": checkpoint, "iteration": iteration}
    if selection is not None:
        block[f"val_{family.metric}"] = selection["value"]
        block["selected_by"] = selection["metric"]
    return block


def describe(block: Mapping[str, Any]) -> str:
    """What a progress line says of a ``selected`` block: ``best.pt (iteration 400,
    val_accuracy 0.8312)`` or ``checkpoint.pt (iteration 600, the last)``."""
    scores = [f"{key} {value:.4f}" for key, value in block.items() if key.startswith("val_")]
    said = ", ".join([f"iteration {block['iteration']}", *(scores or ["the last"])])
    return f"{block['checkpoint']} ({said})"


def checkpoint_to_evaluate(
    run_dir: Path, family: TaskFamily, config: TrainConfig, choice: str | None
) -> str:
    """The file ``metaopt eval --checkpoint choice`` evaluates: ``best.pt`` when the run has one
    and ``choice`` is ``None`` or ``"best"``, else ``checkpoint.pt``.

    Raises:
        ConfigError: ``choice`` is not one of `CHOICES`, or ``"best"`` for a run without
            ``best.pt`` (saying why it has none).
    """
    if choice is not None and choice not in CHOICES:
        raise ConfigError(f"--checkpoint must be one of {', '.join(CHOICES)}; got {choice!r}")
    has_best = (Path(run_dir) / BEST).is_file()
    if choice == "best" and not has_best:
        why = (
            f"family {family.name} holds out no validation tasks, so its runs keep none"
            if family.selection_metric(config) is None
            else "it is written at the first validation (every --eval-every iterations and "
            "after the last)"
        )
        raise ConfigError(f"--checkpoint best: {run_dir} has no {BEST} ({why})")
    return BEST if has_best and choice != "last" else CHECKPOINT
