"""The one meta-training loop. It knows nothing about sine curves or MDPs: families plug in.

A run directory holds ``config.json`` (resolved config, seed, package versions),
``metrics.jsonl`` (one JSON object per iteration), ``checkpoint.pt``, ``eval.json`` and PNG plots.
"""

from __future__ import annotations

import json
import math
import platform
import sys
import time
from collections.abc import Sequence
from datetime import datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from metaopt.algorithms import MAML, MetaLearner, MetaSGD, Reptile, linear_annealing
from metaopt.checkpoint import load_checkpoint, save_checkpoint
from metaopt.config import load_config
from metaopt.family import ConfigError, TaskFamily, TrainConfig
from metaopt.registry import get_family

__all__ = [
    "NonFiniteError",
    "build_algorithm",
    "build_outer_optimizer",
    "evaluate_run",
    "load_run",
    "train",
]


class NonFiniteError(FloatingPointError):
    """A loss or meta-gradient became NaN or infinite during training."""


def build_algorithm(config: TrainConfig, model: torch.nn.Module) -> MetaLearner:
    """The algorithm named by ``config.algo`` around ``model``."""
    if config.algo in ("maml", "fomaml"):
        return MAML(
            model,
            inner_lr=config.inner_lr,
            inner_steps=config.inner_steps,
            first_order=config.first_order,
            inner_optimizer=config.inner_optimizer,
        )
    if config.algo == "metasgd":
        return MetaSGD(model, inner_lr=config.inner_lr, inner_steps=config.inner_steps)
    if config.algo == "reptile":
        return Reptile(
            model,
            inner_lr=config.inner_lr,
            inner_steps=config.inner_steps,
            inner_optimizer=config.inner_optimizer,
        )
    raise ConfigError(f"--algo must be one of maml, fomaml, metasgd, reptile; got {config.algo!r}")


def build_outer_optimizer(
    config: TrainConfig, algo: MetaLearner
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler | None]:
    """The outer optimiser over ``algo.meta_parameters()``, and the annealing schedule if asked."""
    params = algo.meta_parameters()
    if config.outer_optimizer == "adam":
        outer: torch.optim.Optimizer = torch.optim.Adam(params, lr=config.outer_lr)
    else:
        outer = torch.optim.SGD(params, lr=config.outer_lr)
    schedule = linear_annealing(outer, max(config.iterations, 1)) if config.anneal else None
    return outer, schedule


def algorithm_state(algo: MetaLearner) -> dict[str, Any]:
    state: dict[str, Any] = {"model": algo.model.state_dict()}
    if isinstance(algo, MetaSGD):
        state["inner_lrs"] = [rate.detach().clone() for rate in algo.inner_lrs]
    return state


def load_algorithm_state(algo: MetaLearner, state: dict[str, Any]) -> None:
    algo.model.load_state_dict(state["model"])
    if isinstance(algo, MetaSGD):
        with torch.no_grad():
            for rate, saved in zip(algo.inner_lrs, state["inner_lrs"], strict=True):
                rate.copy_(saved)


def _versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for name in ("metaopt", "torch", "torchopt", "numpy", "gymnasium"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "not installed"
    return found


def _make_run_dir(family: TaskFamily, config: TrainConfig) -> Path:
    if config.out is not None:
        run_dir = Path(config.out)
    else:
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        run_dir = Path("runs") / f"{family.name}-{config.algo}-{stamp}"
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"--out {str(run_dir)!r} exists and is not a directory")
    if run_dir.is_dir() and any(run_dir.iterdir()):
        raise ConfigError(
            f"--out {str(run_dir)!r} is not empty; choose a new directory "
            "(metaopt never overwrites a saved run)"
        )
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


def _check_finite(iteration: int, metrics: Any, algo: MetaLearner) -> None:
    for quantity in ("support_before", "support_after", "query"):
        values = getattr(metrics, quantity)
        bad = (~torch.isfinite(values)).nonzero().flatten()
        if len(bad):
            raise NonFiniteError(
                f"iteration {iteration}: {quantity} loss of task {int(bad[0])} is "
                f"{values[bad[0]].item()}"
            )
    for index, p in enumerate(algo.meta_parameters()):
        if p.grad is not None and not bool(torch.isfinite(p.grad).all()):
            raise NonFiniteError(
                f"iteration {iteration}: meta-gradient of meta-parameter {index} "
                f"(shape {tuple(p.shape)}) is not finite"
            )


def train(family: TaskFamily, config: TrainConfig, *, progress: bool | None = None) -> Path:
    """Meta-train ``family`` under ``config``, evaluate, plot; return the run directory.

    Args:
        family: The task family.
        config: A validated config (see :func:`metaopt.config.resolve_config`).
        progress: Show a progress bar; ``None`` shows one only when stderr is a terminal.
    """
    config.validate()
    family.validate(config)
    run_dir = _make_run_dir(family, config)
    (run_dir / "config.json").write_text(
        json.dumps(
            {
                "family": family.name,
                "config": config.to_dict(),
                "seed": config.seed,
                "versions": _versions(),
                "command": sys.argv,
                "threads": torch.get_num_threads(),
            },
            indent=2,
        )
        + "\n"
    )
    torch.manual_seed(config.seed)
    model = family.make_model(config)
    algo = build_algorithm(config, model)
    outer, schedule = build_outer_optimizer(config, algo)
    rng = np.random.default_rng(config.seed)

    def save(iteration: int) -> None:
        save_checkpoint(
            run_dir / "checkpoint.pt",
            {
                "family": family.name,
                "config": config.to_dict(),
                "iteration": iteration,
                "algorithm": algorithm_state(algo),
                "outer": outer.state_dict(),
                "schedule": schedule.state_dict() if schedule is not None else None,
                "rng": rng.bit_generator.state,
                "torch_rng": torch.get_rng_state(),
            },
        )

    metrics_rows: list[dict[str, Any]] = []
    start = time.perf_counter()
    disable = None if progress is None else not progress
    with (
        open(run_dir / "metrics.jsonl", "w") as log,
        tqdm(total=config.iterations, desc=f"{family.name}/{config.algo}", disable=disable) as bar,
    ):
        for iteration in range(1, config.iterations + 1):
            tasks = family.sample_tasks(config, rng, config.meta_batch)
            outer.zero_grad(set_to_none=True)
            metrics = algo.meta_backward(tasks)
            try:
                _check_finite(iteration, metrics, algo)
            except NonFiniteError:
                save(iteration - 1)  # parameters are still the last good ones
                raise
            outer.step()
            if schedule is not None:
                schedule.step()
            row: dict[str, Any] = {
                "iteration": iteration,
                "seconds": round(time.perf_counter() - start, 4),
                **metrics.means(),
                **family.iteration_metrics(tasks),
            }
            if config.eval_every and iteration % config.eval_every == 0:
                row.update(family.periodic_eval(algo, config))
            metrics_rows.append(row)
            log.write(json.dumps(row) + "\n")
            log.flush()
            if config.checkpoint_every and iteration % config.checkpoint_every == 0:
                save(iteration)
            bar.set_postfix(query=f"{row['query']:.4g}", refresh=False)
            bar.update()
    save(config.iterations)
    evaluation = family.evaluate(algo, config, run_dir)
    _write_json(run_dir / "eval.json", evaluation)
    from metaopt.plots import plot_training_curve

    plot_training_curve(run_dir / "training_curve.png", metrics_rows, family.name, config.algo)
    family.plot(algo, config, run_dir, metrics_rows, evaluation)
    return run_dir


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, default=_json_default) + "\n")


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic | torch.Tensor):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def load_run(run_dir: Path) -> tuple[TaskFamily, TrainConfig, MetaLearner]:
    """Rebuild the family, config and trained algorithm of a saved run.

    Raises:
        ConfigError: when ``run_dir`` is not a complete run directory.
    """
    run_dir = Path(run_dir)
    for name in ("config.json", "checkpoint.pt"):
        if not (run_dir / name).is_file():
            raise ConfigError(
                f"RUN_DIR {str(run_dir)!r} has no {name}; is it a metaopt run directory?"
            )
    saved = json.loads((run_dir / "config.json").read_text())
    family = get_family(saved["family"])
    config = load_config(family, run_dir / "config.json")
    try:
        checkpoint = load_checkpoint(run_dir / "checkpoint.pt")
    except ValueError as error:
        raise ConfigError(str(error)) from error
    torch.manual_seed(config.seed)
    algo = build_algorithm(config, family.make_model(config))
    load_algorithm_state(algo, checkpoint["algorithm"])
    return family, config, algo


def evaluate_run(
    run_dir: Path, *, num_tasks: int | None = None, steps: Sequence[int] | None = None
) -> dict[str, Any]:
    """Re-run the final evaluation of a saved run and rewrite its ``eval.json``."""
    if num_tasks is not None and num_tasks < 1:
        raise ConfigError(f"--tasks must be an integer >= 1, got {num_tasks}")
    if steps is not None and (not steps or min(steps) < 0):
        raise ConfigError(f"--steps must be integers >= 0, got {list(steps)}")
    family, config, algo = load_run(run_dir)
    evaluation = family.evaluate(algo, config, Path(run_dir), num_tasks=num_tasks, steps=steps)
    _write_json(Path(run_dir) / "eval.json", evaluation)
    return evaluation


def summarize(evaluation: dict[str, Any]) -> str:
    """A few lines of eval.json for the terminal."""
    lines = [f"metric: {evaluation.get('metric')} over {evaluation.get('tasks')} held-out tasks"]
    baseline = evaluation.get("baseline", {}).get("by_steps", {})
    for step, value in evaluation.get("by_steps", {}).items():
        line = f"  after {step:>2} steps: {value['mean']:.4f} ± {value['ci95']:.4f}"
        if step in baseline and math.isfinite(baseline[step]["mean"]):
            line += f"   (baseline {baseline[step]['mean']:.4f} ± {baseline[step]['ci95']:.4f})"
        lines.append(line)
    return "\n".join(lines)
