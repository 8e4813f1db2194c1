"""A saved run, read back: the trained algorithm, its evaluation again, and a summary of it.

``metaopt eval RUN_DIR`` calls [`evaluate_run`][metaopt.training.evaluate_run]; the tools rebuild
runs with [`load_run`][metaopt.training.load_run].
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from metaopt.algorithms import MetaLearner
from metaopt.training import distributed
from metaopt.training.build import apply_threads, build_algorithm
from metaopt.training.checkpoint import CheckpointError, load_checkpoint, remove_temporaries
from metaopt.training.config import load_config
from metaopt.training.device import autocast, run_device
from metaopt.training.family import ConfigError, EvalRequest, TaskFamily, TrainConfig
from metaopt.training.lock import lock_run_dir
from metaopt.training.progress import LOGGER
from metaopt.training.registry import get_family
from metaopt.training.resuming import check_checkpoint
from metaopt.training.rundir import BEST, CHECKPOINT, check_run_dir, read_run, write_json
from metaopt.training.selection import CHOICES, checkpoint_to_evaluate, describe, selected_block
from metaopt.training.state import load_algorithm_state

__all__ = [
    "evaluate_run",
    "evaluation_file",
    "evaluation_path",
    "evaluation_summary",
    "evaluation_tag",
    "load_run",
]


def load_run(
    run_dir: Path,
    checkpoint: str = CHECKPOINT,
    *,
    device: str | None = None,
    precision: str | None = None,
) -> tuple[TaskFamily, TrainConfig, MetaLearner]:
    """Rebuild the family, config and trained algorithm of a saved run, with the parameters of
    ``checkpoint`` (a file of ``run_dir``: the latest by default; ``best.pt`` those selected on
    validation tasks, `metaopt.training.selection`).

    Args:
        run_dir: A directory written by [`train`][metaopt.training.train].
        checkpoint: The file of ``run_dir`` whose parameters are loaded.
        device: ``--device`` for the rebuilt run (default: the run's own); a checkpoint written
            on any device loads onto any other.
        precision: ``--precision`` for the rebuilt run (default: the run's own).

    Raises:
        ConfigError: when ``run_dir`` is not a complete run directory or the checkpoint is
            damaged, or ``device`` / ``precision`` is not one this machine and family take.
    """
    family, trained = _read_run(Path(run_dir))
    config = _on_device(trained, device, precision)
    algo, _ = _restore(Path(run_dir), family, trained, config, checkpoint)
    return family, config, algo


def _read_run(run_dir: Path) -> tuple[TaskFamily, TrainConfig]:
    """The family and config of a run directory that has a checkpoint."""
    for name in ("config.json", CHECKPOINT):
        if not (run_dir / name).is_file():
            raise ConfigError(
                f"RUN_DIR {str(run_dir)!r} has no {name}; is it a metaopt run directory?"
            )
    family = get_family(read_run(run_dir)["family"])
    return family, load_config(family, run_dir / "config.json")


def _on_device(trained: TrainConfig, device: str | None, precision: str | None) -> TrainConfig:
    """``trained`` with the ``--device`` and ``--precision`` asked for (``None``: the run's),
    checked; a device this machine lacks is refused before any checkpoint is read."""
    asked: dict[str, Any] = {"device": device, "precision": precision}
    config = dataclasses.replace(trained, **{k: v for k, v in asked.items() if v is not None})
    config.validate()
    run_device(config)
    return config


def _restore(
    run_dir: Path,
    family: TaskFamily,
    trained: TrainConfig,
    config: TrainConfig,
    checkpoint: str,
) -> tuple[MetaLearner, dict[str, Any]]:
    """The algorithm of ``config`` with the parameters of ``run_dir / checkpoint`` (checked
    against the run's own config, ``trained``), and the checkpoint."""
    path = run_dir / checkpoint
    if not path.is_file():
        raise ConfigError(f"RUN_DIR {str(run_dir)!r} has no {checkpoint}")
    try:
        state = load_checkpoint(path)
    except CheckpointError as error:
        raise ConfigError(str(error)) from error
    check_checkpoint(family, trained, state, path, warn=False)  # as --resume checks it
    torch.manual_seed(config.seed)
    algo = build_algorithm(config, family.make_model(config))
    try:
        load_algorithm_state(algo, state["algorithm"])
    except (RuntimeError, ValueError, KeyError, TypeError) as error:
        raise ConfigError(f"checkpoint {path} does not fit the run's model: {error}") from None
    return algo, state


def evaluate_run(
    run_dir: Path,
    *,
    num_tasks: int | None = None,
    steps: Sequence[int] | None = None,
    checkpoint: str | None = None,
    device: str | None = None,
    precision: str | None = None,
) -> dict[str, Any]:
    """Re-run the final evaluation of a saved run and rewrite its ``eval.json`` and plots
    (atomically: the earlier files survive a failed write); with ``num_tasks`` or ``steps``,
    evaluate those instead and write ``eval-<tasks>-<steps>.json`` and plots named likewise
    (``evaluation_file``), leaving the run's own evaluation as it was.

    The parameters are those of ``best.pt`` when the run has one (selected on validation tasks,
    `metaopt.training.selection`), as in the run's own final evaluation; ``checkpoint="last"``
    takes ``checkpoint.pt`` instead (its files are then tagged ``last``: ``eval-last.json``),
    ``"best"`` insists on ``best.pt``. eval.json's ``selected`` names the file used, for a
    family that selects.

    ``device`` and ``precision`` (default: the run's) say where and how it is evaluated
    (`load_run`).

    Under torchrun, every rank evaluates a share of the held-out tasks and rank 0 writes. Rank 0
    holds the run directory's lock throughout, so no run or resume writes there meanwhile.

    Raises:
        ConfigError: not a run directory, a checkpoint that is damaged or belongs to another
            run (the checks of [`resume`][metaopt.training.resume]), ``checkpoint="best"``
            for a run without ``best.pt``, or a device or precision this machine or family
            does not take.
        RunDirectoryLocked: another process owns the directory.
    """
    if num_tasks is not None and num_tasks < 1:
        raise ConfigError(f"--tasks must be an integer >= 1, got {num_tasks}")
    if steps is not None and (not steps or min(steps) < 0):
        raise ConfigError(f"--steps must be integers >= 0, got {list(steps)}")
    if checkpoint is not None and checkpoint not in CHOICES:
        raise ConfigError(f"--checkpoint must be one of {', '.join(CHOICES)}; got {checkpoint!r}")
    run_dir = check_run_dir(Path(run_dir))  # before the lock: a directory not a run, untouched
    with lock_run_dir(run_dir) as lock:
        if lock is not None:
            remove_temporaries(run_dir)
        return _evaluate_locked(run_dir, num_tasks, steps, checkpoint, device, precision)


def _evaluate_locked(
    run_dir: Path,
    num_tasks: int | None,
    steps: Sequence[int] | None,
    choice: str | None,
    device: str | None,
    precision: str | None,
) -> dict[str, Any]:
    family, trained = _read_run(run_dir)
    config = _on_device(trained, device, precision)
    checkpoint = checkpoint_to_evaluate(run_dir, family, config, choice)
    algo, state = _restore(run_dir, family, trained, config, checkpoint)
    selected = None
    if checkpoint == BEST or family.selection_metric(config) is not None:
        selected = selected_block(
            family, checkpoint, int(state["iteration"]), state.get("selection")
        )
    on = run_device(config)
    info = distributed.setup(config.dist_backend, config.dist_timeout, on)
    try:
        apply_threads(config)
        if selected is not None and info.is_main:
            LOGGER.info("evaluating %s on held-out tasks", describe(selected))
        request = EvalRequest(num_tasks, steps, info)
        with autocast(config, on):
            evaluation = family.evaluate(algo, config, Path(run_dir), request)
        if selected is not None:
            evaluation["selected"] = selected
        if info.is_main:
            tag = _tag(run_dir, evaluation, num_tasks, steps, choice)
            write_json(evaluation_path(run_dir, tag), evaluation)
            from metaopt.training.plots import plot_run

            plot_run(family, config, algo, Path(run_dir), evaluation, tag)  # no stale pictures
        distributed.barrier(info)
    finally:
        distributed.teardown(info)
    return evaluation


def evaluation_file(
    run_dir: Path,
    evaluation: dict[str, Any],
    *,
    num_tasks: int | None = None,
    steps: Sequence[int] | None = None,
    checkpoint: str | None = None,
) -> Path:
    """Where [`evaluate_run`][metaopt.training.evaluate_run] with these arguments wrote
    ``evaluation``: ``eval.json`` for the run's own; ``eval-<tasks>-<steps>.json`` for other
    tasks or steps; ``eval-last.json`` (or ``eval-last-<tasks>-<steps>.json``) for the last
    parameters of a run that has ``best.pt``."""
    return evaluation_path(run_dir, _tag(Path(run_dir), evaluation, num_tasks, steps, checkpoint))


def _tag(
    run_dir: Path,
    evaluation: dict[str, Any],
    num_tasks: int | None,
    steps: Sequence[int] | None,
    checkpoint: str | None,
) -> str:
    parts = []
    if checkpoint == "last" and (run_dir / BEST).is_file():  # not the run's own parameters
        parts.append("last")
    if num_tasks is not None or steps is not None:
        parts.append(evaluation_tag(evaluation))
    return "-".join(parts)


def evaluation_path(run_dir: Path, tag: str = "") -> Path:
    """Where an evaluation of ``run_dir`` is written: ``eval.json`` for the run's own (``tag``
    empty), ``eval-<tag>.json`` for one of other tasks or steps (``eval-1000-0,1,5.json``)."""
    return Path(run_dir) / (f"eval-{tag}.json" if tag else "eval.json")


def evaluation_tag(evaluation: dict[str, Any]) -> str:
    """``"<tasks>-<steps>"`` of an evaluation, as it reports them (``"1000-0,1,5"``): what names
    the files of an evaluation of other tasks or steps than the run's."""
    steps = ",".join(str(step) for step in evaluation.get("by_steps", {}))
    return f"{evaluation.get('tasks')}-{steps}"


def evaluation_summary(evaluation: dict[str, Any]) -> str:
    """A few lines of eval.json for the terminal: each protocol's curves; where some tasks
    diverged, the count instead of a mean (the other tasks' mean would not compare with the
    means over all tasks at the other steps: it leaves out the worst ones)."""

    def shown(value: dict[str, Any], tasks: Any) -> str:
        diverged = value.get("diverged", value.get("diverged_tasks"))
        if diverged:
            return (
                f"diverged on {diverged} of {tasks} tasks"
                if tasks
                else f"diverged on {diverged} tasks"
            )
        mean, ci95 = value.get("mean"), value.get("ci95")
        if isinstance(mean, int | float) and math.isfinite(mean):
            return f"{mean:.4f} ± {ci95:.4f}" if isinstance(ci95, int | float) else f"{mean:.4f}"
        return "not finite (adaptation diverged on some tasks)"

    def table(block: dict[str, Any]) -> list[str]:
        baseline = block.get("baseline", {}).get("by_steps", {})
        tasks = block.get("tasks", evaluation.get("tasks"))
        lines = []
        for step, value in block.get("by_steps", {}).items():
            line = f"  after {step:>2} steps: {shown(value, tasks)}"
            if step in baseline:
                line += f"   (baseline {shown(baseline[step], tasks)})"
            lines.append(line)
        return lines

    lines = [f"metric: {evaluation.get('metric')} over {evaluation.get('tasks')} held-out tasks"]
    if isinstance(evaluation.get("selected"), dict):
        lines[0] += f", with {describe(evaluation['selected'])}"
    lines += table(evaluation)
    # Further protocols (sine's protocol_10pt): each block with its own curves, said as well.
    for name, block in evaluation.items():
        if name != "baseline" and isinstance(block, dict) and "by_steps" in block:
            lines.append(f"{name}: {block.get('description', block.get('metric'))}")
            lines += table(block)
    if "solve_skipped" in evaluation:
        lines.append(
            f"meta-batches without an outer step (a linear solve missed --cg-tol, "
            f"--on-solve-failure skip): {evaluation['solve_skipped']}"
        )
    return "\n".join(lines)
