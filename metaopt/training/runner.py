"""The one meta-training loop. It knows nothing about sine curves or MDPs: families plug in.

A run directory holds ``config.json`` (resolved config, seed, package versions),
``metrics.jsonl`` (one JSON object per iteration), ``checkpoint.pt`` (and ``checkpoint.prev.pt``,
the one before), ``eval.json`` and PNG plots.

Reliability (docs/reliability.md): checkpoints hold everything the loop's future depends on
(parameters, learned rates, outer optimiser and schedule, iteration, config and every random-number
state), so :func:`resume` continues a run bit for bit; SIGINT/SIGTERM finish the current iteration,
save it and stop; a non-finite loss or meta-gradient stops training after saving the last good
state, or with ``skip_nonfinite`` skips the batch and counts it.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
import random
import signal
import sys
import threading
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
from tqdm.auto import tqdm

from metaopt.algorithms import MAML, MetaLearner, MetaMetrics, MetaSGD, Reptile, linear_annealing
from metaopt.training import distributed
from metaopt.training.checkpoint import (
    CheckpointError,
    atomic_write_bytes,
    load_checkpoint,
    previous_path,
    save_checkpoint,
)
from metaopt.training.config import load_config
from metaopt.training.family import ConfigError, TaskFamily, TrainConfig, flag
from metaopt.training.hooks import TrainingHooks
from metaopt.training.registry import get_family

__all__ = [
    "CHECKPOINT",
    "NonFiniteError",
    "ResumeWarning",
    "TrainingInterrupted",
    "build_algorithm",
    "build_outer_optimizer",
    "evaluate_run",
    "load_run",
    "random_state",
    "restore_random_state",
    "resume",
    "train",
]

#: The latest checkpoint of a run directory; :func:`metaopt.training.checkpoint.previous_path` names the one
#: before it (``checkpoint.prev.pt``).
CHECKPOINT = "checkpoint.pt"
#: Where a resume from an older checkpoint moves the latest one, so that it is never rotated into
#: ``checkpoint.prev.pt``.
ABANDONED = "checkpoint.abandoned.pt"
#: Row keys that differ between two otherwise identical runs (wall-clock time).
WALL_TIME_KEYS = ("seconds",)


class NonFiniteError(FloatingPointError):
    """A loss or meta-gradient became NaN or infinite during training.

    The message names the iteration, the task and the quantity, and where the last good state was
    saved. ``iteration`` is the iteration that failed; ``checkpoint`` the file holding the state
    before it (``None`` if nothing could be saved).
    """

    def __init__(self, message: str, *, iteration: int, checkpoint: Path | None) -> None:
        super().__init__(message)
        self.iteration = iteration
        self.checkpoint = checkpoint


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped on SIGINT or SIGTERM.

    After the first signal the loop finishes the iteration under way, saves it and raises this
    (``checkpoint`` is the file written); a second signal raises it at once, saving nothing
    (``checkpoint`` is the latest one on disk, or ``None``). ``exit_status`` is the shell's
    ``128 + signal number``: 130 for SIGINT, 143 for SIGTERM.
    """

    def __init__(
        self, message: str, *, signum: int, iteration: int, checkpoint: Path | None
    ) -> None:
        super().__init__(message)
        self.signum = signum
        self.iteration = iteration
        self.checkpoint = checkpoint

    @property
    def exit_status(self) -> int:
        return 128 + self.signum


class ResumeWarning(UserWarning):
    """A resumed run may not continue bit for bit (other package versions or thread count)."""


# -- building the pieces --------------------------------------------------------------------------


def build_algorithm(config: TrainConfig, model: torch.nn.Module) -> MetaLearner:
    """The algorithm named by ``config.algo`` around ``model``."""
    if config.algo in ("maml", "fomaml"):
        return MAML(
            model,
            inner_lr=config.inner_lr,
            inner_steps=config.inner_steps,
            first_order=config.first_order,
            inner_optimizer=config.inner_optimizer,
            engine=config.engine,
            batch_norm=config.batch_norm,
        )
    if config.algo == "metasgd":
        return MetaSGD(
            model,
            inner_lr=config.inner_lr,
            inner_steps=config.inner_steps,
            engine=config.engine,
            batch_norm=config.batch_norm,
        )
    if config.algo == "reptile":
        return Reptile(
            model,
            inner_lr=config.inner_lr,
            inner_steps=config.inner_steps,
            inner_optimizer=config.inner_optimizer,
            engine=config.engine,
            batch_norm=config.batch_norm,
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
    return {"model": algo.model.state_dict(), **algo.learned_state()}


def load_algorithm_state(algo: MetaLearner, state: dict[str, Any]) -> None:
    algo.model.load_state_dict(state["model"])
    algo.load_learned_state(state)


# -- random-number state --------------------------------------------------------------------------


def _apply_threads(config: TrainConfig) -> None:
    if config.threads:
        torch.set_num_threads(config.threads)


def _seed_everything(seed: int) -> None:
    """Seed every global generator a family might touch (they should use the loop's ``rng``)."""
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed)  # noqa: NPY002 - seeded so that a stray global draw still repeats


def random_state(rng: np.random.Generator) -> dict[str, Any]:
    """Every random-number state in play: the loop's Generator (the task samplers draw only from
    it), Python's ``random``, numpy's global generator, torch's CPU and CUDA generators.

    The result holds only tensors, numbers, strings and containers, so it goes into a checkpoint
    that ``torch.load(weights_only=True)`` reads.
    """
    legacy = np.random.get_state(legacy=False)  # noqa: NPY002
    legacy["state"] = {**legacy["state"], "key": legacy["state"]["key"].tolist()}
    return {
        "loop": rng.bit_generator.state,
        "python": random.getstate(),
        "numpy": legacy,
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def restore_random_state(rng: np.random.Generator, state: Mapping[str, Any]) -> None:
    """Put back what :func:`random_state` captured (``rng`` is set in place)."""
    rng.bit_generator.state = state["loop"]
    version_, internal, gauss = state["python"]
    random.setstate((version_, tuple(internal), gauss))
    legacy = dict(state["numpy"])
    legacy["state"] = {**legacy["state"], "key": np.asarray(legacy["state"]["key"], np.uint32)}
    np.random.set_state(legacy)  # noqa: NPY002
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda")
    if cuda is not None:
        if torch.cuda.is_available() and torch.cuda.device_count() == len(cuda):
            torch.cuda.set_rng_state_all(cuda)
        else:
            warnings.warn(
                f"the checkpoint holds the state of {len(cuda)} CUDA generator(s) but this "
                f"machine has {torch.cuda.device_count() if torch.cuda.is_available() else 0}; "
                "they are not restored",
                ResumeWarning,
                stacklevel=2,
            )


# -- the run directory ----------------------------------------------------------------------------


def package_versions() -> dict[str, str]:
    """Python's and the packages' versions, as config.json, checkpoints and reports record them."""
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
    return new_directory(
        run_dir,
        "--out",
        f"choose a new directory, or continue the run there with --resume {run_dir} (metaopt "
        "never overwrites a saved run)",
    )


def new_directory(path: Path, flag: str, if_not_empty: str) -> Path:
    """``path`` as a new or empty directory (created with its parents) for a command's output.

    Raises:
        ConfigError: naming ``flag``, when ``path`` is a file, cannot be created, or is a
            directory with something in it (the message ends with ``if_not_empty``, what to do).
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{flag} {str(path)!r} exists and is not a directory")
    if path.is_dir() and any(path.iterdir()):
        raise ConfigError(f"{flag} {str(path)!r} is not empty; {if_not_empty}")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ConfigError(f"{flag} {str(path)!r} cannot be created: {error}") from None
    return path


def _json_text(data: Any) -> str:
    """Strict JSON (RFC 8259 has no NaN or Infinity): non-finite numbers are written as null."""
    return json.dumps(_strict(data), indent=2, default=_json_default, allow_nan=False) + "\n"


def _strict(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _strict(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_strict(item) for item in value]
    if isinstance(value, np.generic | torch.Tensor) and getattr(value, "ndim", 0) == 0:
        value = value.item()
    return _finite_or_none(value)


def _write_json_atomic(path: Path, data: Any) -> None:
    atomic_write_bytes(path, _json_text(data).encode())


@dataclasses.dataclass
class _Run:
    """Everything the training loop carries from one iteration to the next."""

    family: TaskFamily
    config: TrainConfig
    run_dir: Path
    algo: MetaLearner
    outer: torch.optim.Optimizer
    schedule: torch.optim.lr_scheduler.LRScheduler | None
    rng: np.random.Generator
    iteration: int = 0
    skipped: int = 0
    seconds: float = 0.0
    #: iteration of the latest checkpoint on disk (None: none yet)
    saved: int | None = None
    versions: dict[str, str] = dataclasses.field(default_factory=package_versions)
    #: this process's place under torchrun (one process: rank 0 of 1)
    dist: distributed.DistInfo = dataclasses.field(default_factory=distributed.DistInfo)
    hooks: Sequence[TrainingHooks] = ()

    @property
    def checkpoint(self) -> Path:
        return self.run_dir / CHECKPOINT


def _save(
    run: _Run, randomness: dict[str, Any] | None = None, *, log: IO[str] | None = None
) -> Path:
    """Checkpoint ``run`` at ``run.iteration``; ``randomness`` defaults to the current states.

    Under torchrun rank 0 alone writes (every rank holds the same state).
    """
    if not run.dist.is_main:
        run.saved = run.iteration
        return run.checkpoint
    if log is not None:  # the metrics of a checkpointed iteration are on disk before it is
        log.flush()
        os.fsync(log.fileno())
    save_checkpoint(
        run.checkpoint,
        {
            "family": run.family.name,
            "config": json.dumps(run.config.to_dict()),
            "iteration": run.iteration,
            "algorithm": algorithm_state(run.algo),
            "outer": run.outer.state_dict(),
            "schedule": run.schedule.state_dict() if run.schedule is not None else None,
            "random": randomness if randomness is not None else random_state(run.rng),
            "skipped": run.skipped,
            "seconds": run.seconds,
            "versions": run.versions,
            "threads": torch.get_num_threads(),
        },
        keep_previous=True,
    )
    run.saved = run.iteration
    return run.checkpoint


# -- signals --------------------------------------------------------------------------------------


class _StopOnSignal:
    """SIGINT/SIGTERM: note the first, so the loop stops after the iteration under way; a second
    one interrupts at once. Installed only in the main thread (the only one Python signals reach).
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, run: _Run) -> None:
        self.run = run
        self.signum: int | None = None

    def __call__(self, signum: int, frame: object) -> None:
        if self.signum is None:
            self.signum = signum
            return
        run = self.run
        latest = (
            f"the latest checkpoint is iteration {run.saved} ({run.checkpoint})"
            if run.saved is not None
            else "no checkpoint was saved yet"
        )
        raise TrainingInterrupted(
            f"interrupted again by {signal.Signals(signum).name} during iteration "
            f"{run.iteration + 1}; stopped without saving it: {latest}",
            signum=signum,
            iteration=run.iteration,
            checkpoint=run.checkpoint if run.saved is not None else None,
        )

    @contextmanager
    def installed(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {s: signal.signal(s, self) for s in self.SIGNALS}
        try:
            yield
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler if handler is not None else signal.SIG_DFL)

    def stop_if_asked(self, log: IO[str]) -> None:
        run = self.run
        # Under torchrun every rank must stop after the same iteration, or the others would wait
        # in the next collective for one that has left.
        if not distributed.any_rank(self.signum is not None, run.dist):
            return
        signum = self.signum if self.signum is not None else signal.SIGTERM
        if run.saved != run.iteration:
            _save(run, log=log)
        name = signal.Signals(signum).name
        raise TrainingInterrupted(
            f"interrupted by {name} after iteration {run.iteration}; checkpoint saved in "
            f"{run.checkpoint}; continue with: metaopt train {run.family.name} "
            f"--resume {run.run_dir}",
            signum=signum,
            iteration=run.iteration,
            checkpoint=run.checkpoint,
        )


# -- non-finite values ----------------------------------------------------------------------------


#: How an error message names each per-task loss of :class:`~metaopt.algorithms.MetaMetrics`.
_QUANTITIES = {
    "support_before": "support loss (before adaptation)",
    "support_after": "support loss (after adaptation)",
    "query": "query loss",
}


def _non_finite(metrics: Any, algo: MetaLearner) -> tuple[str, int | None] | None:
    """(what is wrong, task index) for the first NaN/inf among task losses and meta-gradient."""
    for quantity, described in _QUANTITIES.items():
        values = getattr(metrics, quantity)
        bad = (~torch.isfinite(values)).nonzero().flatten()
        if len(bad):
            task = int(bad[0])
            return f"{described} of task {task} is {values[task].item()}", task
    for index, p in enumerate(algo.meta_parameters()):
        if p.grad is not None and not bool(torch.isfinite(p.grad).all()):
            shape = tuple(p.shape)
            return f"meta-gradient of meta-parameter {index} (shape {shape}) is not finite", None
    return None


def _task_with_non_finite_gradient(algo: MetaLearner, tasks: Sequence[Any]) -> int | None:
    """The first task whose meta-gradient alone is non-finite (a diagnosis after a failure)."""
    params = algo.meta_parameters()
    try:
        for index in range(len(tasks)):
            for p in params:
                p.grad = None
            try:
                algo.meta_backward([tasks[index]])
            except Exception:  # a diagnosis must not hide the error it diagnoses
                continue
            if any(p.grad is not None and not bool(torch.isfinite(p.grad).all()) for p in params):
                return index
        return None
    finally:
        for p in params:
            p.grad = None


def _finite_or_none(value: Any) -> Any:
    """JSON has no NaN: a non-finite number in a metrics row is written as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


# -- the loop -------------------------------------------------------------------------------------


def _gathered(metrics: MetaMetrics, num_tasks: int, info: distributed.DistInfo) -> MetaMetrics:
    """Every rank's per-task losses, in task order, on every rank (one collective)."""
    rows = torch.stack([metrics.support_before, metrics.support_after, metrics.query])
    return MetaMetrics(*distributed.gather_tasks(rows, num_tasks, info).unbind(0))


def _loop(run: _Run, log: IO[str], stop: _StopOnSignal, progress: bool | None) -> None:
    family, config, algo, outer = run.family, run.config, run.algo, run.outer
    params = algo.meta_parameters()
    recorded_engine: str | None = None
    start = time.perf_counter() - run.seconds
    disable = (None if progress is None else not progress) if run.dist.is_main else True
    with tqdm(
        total=config.iterations,
        initial=run.iteration,
        desc=f"{family.name}/{config.algo}",
        disable=disable,
    ) as bar:
        for iteration in range(run.iteration + 1, config.iterations + 1):
            if run.hooks:
                paused = time.perf_counter()
                for hook in run.hooks:
                    hook.on_iteration_start(iteration, algo)
                start += time.perf_counter() - paused
            before = random_state(run.rng)  # what a checkpoint of the last good state holds
            # Every rank draws the whole meta-batch and adapts to its shard of it.
            tasks = family.sample_tasks(config, run.rng, config.meta_batch)
            local = distributed.shard(tasks, run.dist)
            outer.zero_grad(set_to_none=True)
            metrics = algo.meta_backward(local, scale=1 / len(tasks))
            if algo.last_engine != recorded_engine:
                recorded_engine = algo.last_engine
                _record_engine(run, recorded_engine)
            extra = family.iteration_metrics(local)
            if run.dist.active:
                distributed.all_reduce_gradients(params, run.dist)
                metrics = _gathered(metrics, len(tasks), run.dist)
                extra = distributed.weighted_means(extra, len(local), len(tasks), run.dist)
            problem = _non_finite(metrics, algo)
            if problem is not None and not config.skip_nonfinite:
                # The parameters are still the last good ones; so is ``before``.
                saved = (
                    _save(run, before, log=log) if run.saved != run.iteration else run.checkpoint
                )
                message, task = problem
                if task is None and not run.dist.active:
                    culprit = _task_with_non_finite_gradient(algo, tasks)
                    message += (
                        f" (task {culprit} alone gives a non-finite meta-gradient)"
                        if culprit is not None
                        else " (no single task of the batch reproduces it)"
                    )
                raise NonFiniteError(
                    f"iteration {iteration}: {message}; the last good state (iteration "
                    f"{run.iteration}) is saved in {saved}; --skip-nonfinite skips such batches",
                    iteration=iteration,
                    checkpoint=saved,
                )
            if problem is None:
                outer.step()
                if not bool(torch.stack([torch.isfinite(p).all() for p in params]).all()):
                    latest = (
                        f"iteration {run.saved} in {run.checkpoint}"
                        if run.saved is not None
                        else "none"
                    )
                    raise NonFiniteError(
                        f"iteration {iteration}: the outer step made a meta-parameter non-finite "
                        f"(outer learning rate too large?); nothing saved, the latest checkpoint "
                        f"is {latest}",
                        iteration=iteration,
                        checkpoint=run.checkpoint if run.saved is not None else None,
                    )
            else:
                outer.zero_grad(set_to_none=True)
                run.skipped += 1
            if run.schedule is not None:  # the rate follows the iteration, skipped or not
                run.schedule.step()
            run.iteration = iteration
            run.seconds = time.perf_counter() - start
            row: dict[str, Any] = {
                "iteration": iteration,
                "seconds": round(run.seconds, 4),
                **metrics.means(),
                **extra,
            }
            if config.skip_nonfinite:
                row["skipped"] = run.skipped
            if config.eval_every and iteration % config.eval_every == 0:
                paused = time.perf_counter()  # evaluations are kept out of the clock
                with distributed.sharding(run.dist):  # each rank evaluates a share of the tasks
                    row.update(family.periodic_eval(algo, config))
                    for hook in run.hooks:
                        row.update(hook.on_evaluation(iteration, algo, config))
                start += time.perf_counter() - paused
            row = {key: _finite_or_none(value) for key, value in row.items()}
            log.write(json.dumps(row) + "\n")
            log.flush()
            for hook in run.hooks:
                hook.on_iteration_end(iteration, row)
            if config.checkpoint_every and iteration % config.checkpoint_every == 0:
                _save(run, log=log)
            stop.stop_if_asked(log)
            if row["query"] is not None:
                bar.set_postfix(query=f"{row['query']:.4g}", refresh=False)
            bar.update()


def _fit(run: _Run, progress: bool | None) -> Path:
    """Train ``run`` from ``run.iteration`` to ``config.iterations``, then evaluate and plot."""
    stop = _StopOnSignal(run)
    metrics_path = run.run_dir / "metrics.jsonl" if run.dist.is_main else Path(os.devnull)
    with stop.installed(), open(metrics_path, "a") as log:
        _loop(run, log, stop, progress)
        for hook in run.hooks:
            hook.on_train_end(run.algo, run.config)
        if run.saved != run.iteration:
            _save(run, log=log)
        stop.stop_if_asked(log)
    family, config, algo = run.family, run.config, run.algo
    with distributed.sharding(run.dist):  # every rank evaluates its share of the held-out tasks
        evaluation = family.evaluate(algo, config, run.run_dir)
    if not run.dist.is_main:  # rank 0 writes and plots; the others wait for it
        distributed.barrier(run.dist)
        return run.run_dir
    _write_json(run.run_dir / "eval.json", evaluation)
    from metaopt.training.plots import plot_training_curve

    # Read back rather than kept in memory: memory stays flat however long the run.
    rows = [json.loads(line) for line in (run.run_dir / "metrics.jsonl").read_text().splitlines()]
    plot_training_curve(run.run_dir / "training_curve.png", rows, family.name, config.algo)
    family.plot(algo, config, run.run_dir, rows, evaluation)
    distributed.barrier(run.dist)
    return run.run_dir


def train(
    family: TaskFamily,
    config: TrainConfig,
    *,
    progress: bool | None = None,
    hooks: Sequence[TrainingHooks] = (),
) -> Path:
    """Meta-train ``family`` under ``config``, evaluate, plot; return the run directory.

    Args:
        family: The task family.
        config: A validated config (see :func:`metaopt.training.config.resolve_config`).
        progress: Show a progress bar; ``None`` shows one only when stderr is a terminal.
        hooks: Called at fixed points of each iteration (:class:`TrainingHooks`); their time
            and the periodic evaluation's are kept out of the run's clock.

    Raises:
        ConfigError: a config value out of range, or ``config.out`` not empty.
        NonFiniteError: a NaN/inf loss or meta-gradient (without ``skip_nonfinite``).
        TrainingInterrupted: SIGINT or SIGTERM; the run can be continued with :func:`resume`.
    """
    config.validate()
    family.validate(config)
    info = distributed.setup(config.dist_backend, config.dist_timeout)
    try:
        _check_ranks(config, info)
        _apply_threads(config)
        run_dir = distributed.on_main(lambda: _new_run_dir(family, config, info.world_size), info)
        _seed_everything(config.seed)
        model = family.make_model(config)
        algo = build_algorithm(config, model)
        outer, schedule = build_outer_optimizer(config, algo)
        rng = np.random.default_rng(config.seed)
        run = _Run(family, config, run_dir, algo, outer, schedule, rng, dist=info, hooks=hooks)
        return _fit(run, progress)
    finally:
        distributed.teardown(info)


def _default(config: TrainConfig, name: str) -> Any:
    fields = {f.name: f for f in dataclasses.fields(config)}
    return fields[name].default if name in fields else dataclasses.MISSING


def _record_engine(run: _Run, engine: str | None) -> None:
    """Write the engine ``meta_backward`` ran on into config.json (``engine_used``), once per
    process and again should it change (``auto`` falling back to the loop engine)."""
    if not run.dist.is_main:
        return
    path = run.run_dir / "config.json"
    saved = json.loads(path.read_text())
    if saved.get("engine_used") != engine:
        saved["engine_used"] = engine
        _write_json_atomic(path, saved)


def _check_ranks(config: TrainConfig, info: distributed.DistInfo) -> None:
    """Under torchrun: every rank gets a task of each meta-batch and trains the same config."""
    if info.active:
        distributed.shard_bounds(config.meta_batch, info.rank, info.world_size)
        distributed.check_same_config(config.to_dict(), info)


def _new_run_dir(family: TaskFamily, config: TrainConfig, world_size: int) -> Path:
    run_dir = _make_run_dir(family, config)
    _write_json_atomic(
        run_dir / "config.json",
        {
            "family": family.name,
            "config": config.to_dict(),
            "seed": config.seed,
            "versions": package_versions(),
            "command": sys.argv,
            "threads": torch.get_num_threads(),
            "world_size": world_size,
        },
    )
    return run_dir


# -- resuming -------------------------------------------------------------------------------------


def _read_run(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "config.json"
    if not path.is_file():
        raise ConfigError(
            f"RUN_DIR {str(run_dir)!r} has no config.json; is it a metaopt run directory?"
        )
    try:
        saved = json.loads(path.read_text())
    except ValueError as error:
        raise ConfigError(f"{path} is not valid JSON ({error})") from None
    if not isinstance(saved, dict) or not {"family", "config"} <= set(saved):
        raise ConfigError(f"{path} is not a metaopt config.json (no 'family' and 'config')")
    return saved


def _resumed_config(
    family: TaskFamily, config: TrainConfig, overrides: Mapping[str, Any]
) -> TrainConfig:
    """``config`` with the flags given alongside ``--resume``: equal, or a harmless change."""
    names = {f.name for f in dataclasses.fields(config)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise ConfigError(f"{family.name}: unknown option(s) {', '.join(unknown)}")
    allowed = type(config).RESUMABLE
    changes: dict[str, Any] = {}
    for name, value in overrides.items():
        if name == "out":
            raise ConfigError(
                "--out cannot be combined with --resume: a resumed run continues in RUN_DIR"
            )
        current = getattr(config, name)
        if value == current:
            continue
        if name not in allowed:
            raise ConfigError(
                f"{flag(name)} {value!r} differs from the run's {current!r}: a resumed run keeps "
                f"the configuration it started with (flags that may change: "
                f"{', '.join(map(flag, allowed))})"
            )
        if name == "iterations" and config.anneal:
            raise ConfigError(
                f"--iterations {value!r} differs from the run's {current!r}: with --anneal the "
                "outer learning-rate schedule is built for the run's iterations, so they are fixed"
            )
        changes[name] = value
    if not changes:
        return config
    resumed = dataclasses.replace(config, **changes)
    resumed.validate()
    return resumed


def _load_for_resume(path: Path, run_dir: Path, family: str) -> dict[str, Any]:
    """The checkpoint at ``path``, or a ConfigError that offers the previous one."""
    try:
        return load_checkpoint(path)
    except (FileNotFoundError, CheckpointError) as error:
        problem = f"{path} does not exist" if isinstance(error, FileNotFoundError) else str(error)
    offer = ""
    previous = previous_path(run_dir / CHECKPOINT)
    if path.resolve() != previous.resolve() and previous.is_file():
        try:
            older = load_checkpoint(previous)
            offer = (
                f"; the previous checkpoint {previous.name} (iteration {older['iteration']}) is "
                f"intact: continue from it with metaopt train {family} --resume {run_dir} "
                f"--checkpoint {previous.name}"
            )
        except CheckpointError as error:
            offer = f"; the previous checkpoint is damaged too ({error})"
    raise ConfigError(f"cannot resume: {problem}{offer}")


def _check_checkpoint(
    family: TaskFamily, config: TrainConfig, state: Mapping[str, Any], path: Path
) -> None:
    """Refuse a checkpoint of another family or config, naming the field that differs."""
    if state.get("family") != family.name:
        raise ConfigError(
            f"checkpoint {path} is of family {state.get('family')!r}, the run is {family.name!r}"
        )
    theirs = json.loads(state["config"])
    ours = json.loads(json.dumps(config.to_dict()))
    ignored = set(type(config).RESUMABLE) | {"out"}
    if config.anneal:
        ignored.discard("iterations")
    for name in sorted(set(theirs) | set(ours)):
        if name in ignored:
            continue
        if name not in ours:
            raise ConfigError(
                f"checkpoint {path} has a field {name!r} that family {family.name!r} does not "
                "know: it was written by another version of the family"
            )
        if name not in theirs and ours[name] == _default(config, name):
            continue  # a field added since, at the default that reproduces the old behaviour
        if name not in theirs:
            raise ConfigError(
                f"checkpoint {path} has no field {name!r}: it was written by another version "
                f"of family {family.name!r}"
            )
        if theirs[name] != ours[name]:
            raise ConfigError(
                f"checkpoint {path} was written with {flag(name)} {theirs[name]!r} but the run's "
                f"config.json has {ours[name]!r}: it belongs to another run"
            )
    mine, theirs_versions = package_versions(), state.get("versions", {})
    for package in ("metaopt", "torch", "torchopt", "numpy"):
        if theirs_versions.get(package) != mine.get(package):
            warnings.warn(
                f"the checkpoint was written with {package} {theirs_versions.get(package)}, "
                f"this is {mine.get(package)}: the continuation may differ from an uninterrupted "
                "run in the last bits",
                ResumeWarning,
                stacklevel=3,
            )
    if state.get("threads") != torch.get_num_threads():
        warnings.warn(
            f"the checkpoint was written with {state['threads']} torch threads, this process has "
            f"{torch.get_num_threads()}: the continuation may differ from an uninterrupted run "
            "in the last bits (torch.set_num_threads or OMP_NUM_THREADS sets it)",
            ResumeWarning,
            stacklevel=3,
        )


def _cut_metrics(path: Path, iteration: int) -> None:
    """Cut ``metrics.jsonl`` after ``iteration`` (rows logged after the checkpoint)."""
    rows: list[dict[str, Any]] = []
    lines: list[str] = []
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
            except ValueError:  # a row cut short by a crash: nothing after it counts
                break
            if not isinstance(row, dict) or row.get("iteration", 0) > iteration:
                break
            rows.append(row)
            lines.append(line)
    atomic_write_bytes(path, "".join(line + "\n" for line in lines).encode())
    last = rows[-1]["iteration"] if rows else 0
    if last != iteration:
        warnings.warn(
            f"{path} ends at iteration {last} but the checkpoint is at iteration {iteration}; "
            "the rows in between were lost and stay missing",
            ResumeWarning,
            stacklevel=3,
        )


def resume(
    run_dir: Path | str,
    *,
    family: TaskFamily | None = None,
    overrides: Mapping[str, Any] | None = None,
    checkpoint: str | Path | None = None,
    progress: bool | None = None,
    hooks: Sequence[TrainingHooks] = (),
) -> Path:
    """Continue the run in ``run_dir`` from its latest checkpoint, as if it had never stopped.

    The family and config come from ``run_dir/config.json``. Parameters, learned rates, outer
    optimiser, schedule, iteration, skip count and every random-number state come from the
    checkpoint, and ``metrics.jsonl`` is cut back to the checkpoint's iteration, so the finished
    run's parameters and metrics (but the wall-clock ``seconds``) equal an uninterrupted run's.

    Args:
        run_dir: A directory written by :func:`train`.
        family: The family (default: the one named in ``config.json``); must match it.
        overrides: Config values given again (e.g. command-line flags). Equal values are fine;
            only the fields in ``TrainConfig.RESUMABLE`` may change (``iterations`` to extend a
            run, unless ``anneal``); anything else is refused, naming the field.
        checkpoint: The checkpoint file to continue from, relative to ``run_dir`` (default
            ``checkpoint.pt``; ``checkpoint.prev.pt`` is the one before it). Continuing from an
            older checkpoint moves ``checkpoint.pt`` to ``checkpoint.abandoned.pt``.
        progress, hooks: As in :func:`train`.

    Raises:
        ConfigError: not a run directory, another family, a flag that may not change, a
            checkpoint of another run or format version, or a damaged checkpoint (the message
            offers the previous one when it is intact).
    """
    run_dir = Path(run_dir)
    saved = _read_run(run_dir)
    if family is None:
        family = get_family(saved["family"])
    elif family.name != saved["family"]:
        raise ConfigError(
            f"RUN_DIR {str(run_dir)!r} is a run of family {saved['family']!r}, not {family.name!r}"
        )
    config = _resumed_config(family, load_config(family, run_dir / "config.json"), overrides or {})
    family.validate(config)
    path = Path(checkpoint) if checkpoint is not None else Path(CHECKPOINT)
    path = path if path.is_absolute() else run_dir / path
    state = _load_for_resume(path, run_dir, family.name)
    _check_checkpoint(family, config, state, path)
    iteration = int(state["iteration"])
    if iteration > config.iterations:
        raise ConfigError(
            f"--iterations {config.iterations} is less than the checkpoint's iteration {iteration}"
        )

    info = distributed.setup(config.dist_backend, config.dist_timeout)
    try:
        _check_ranks(config, info)
        _apply_threads(config)
        torch.manual_seed(config.seed)
        algo = build_algorithm(config, family.make_model(config))
        outer, schedule = build_outer_optimizer(config, algo)
        try:
            load_algorithm_state(algo, state["algorithm"])
            outer.load_state_dict(state["outer"])
            if schedule is not None:
                schedule.load_state_dict(state["schedule"])
        except (RuntimeError, ValueError, KeyError, TypeError) as error:
            raise ConfigError(f"checkpoint {path} does not fit the run's model: {error}") from None
        rng = np.random.default_rng(config.seed)
        restore_random_state(rng, state["random"])
        latest = run_dir / CHECKPOINT
        from_latest = path.resolve() == latest.resolve()

        def rewrite_run_dir() -> None:
            if not from_latest and latest.exists():
                os.replace(latest, run_dir / ABANDONED)  # never rotate it into checkpoint.prev.pt
            _cut_metrics(run_dir / "metrics.jsonl", iteration)
            saved["config"] = config.to_dict()
            saved.setdefault("resumed", []).append(
                {
                    "from_iteration": iteration,
                    "checkpoint": path.name,
                    "command": sys.argv,
                    "versions": package_versions(),
                    "threads": torch.get_num_threads(),
                    "world_size": info.world_size,
                }
            )
            _write_json_atomic(run_dir / "config.json", saved)

        distributed.on_main(rewrite_run_dir, info)
        run = _Run(
            family,
            config,
            run_dir,
            algo,
            outer,
            schedule,
            rng,
            iteration=iteration,
            skipped=int(state["skipped"]),
            seconds=float(state["seconds"]),
            saved=iteration if from_latest else None,
            dist=info,
            hooks=hooks,
        )
        return _fit(run, progress)
    finally:
        distributed.teardown(info)


# -- evaluation of a saved run --------------------------------------------------------------------


def _write_json(path: Path, data: Any) -> None:
    path.write_text(_json_text(data))


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic | torch.Tensor):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def load_run(run_dir: Path) -> tuple[TaskFamily, TrainConfig, MetaLearner]:
    """Rebuild the family, config and trained algorithm of a saved run.

    Raises:
        ConfigError: when ``run_dir`` is not a complete run directory or its checkpoint is
            damaged.
    """
    run_dir = Path(run_dir)
    for name in ("config.json", CHECKPOINT):
        if not (run_dir / name).is_file():
            raise ConfigError(
                f"RUN_DIR {str(run_dir)!r} has no {name}; is it a metaopt run directory?"
            )
    saved = _read_run(run_dir)
    family = get_family(saved["family"])
    config = load_config(family, run_dir / "config.json")
    try:
        checkpoint = load_checkpoint(run_dir / CHECKPOINT)
    except CheckpointError as error:
        raise ConfigError(str(error)) from error
    torch.manual_seed(config.seed)
    algo = build_algorithm(config, family.make_model(config))
    load_algorithm_state(algo, checkpoint["algorithm"])
    return family, config, algo


def evaluate_run(
    run_dir: Path, *, num_tasks: int | None = None, steps: Sequence[int] | None = None
) -> dict[str, Any]:
    """Re-run the final evaluation of a saved run and rewrite its ``eval.json``.

    Under torchrun, every rank evaluates a share of the held-out tasks and rank 0 writes.
    """
    if num_tasks is not None and num_tasks < 1:
        raise ConfigError(f"--tasks must be an integer >= 1, got {num_tasks}")
    if steps is not None and (not steps or min(steps) < 0):
        raise ConfigError(f"--steps must be integers >= 0, got {list(steps)}")
    family, config, algo = load_run(run_dir)
    info = distributed.setup(config.dist_backend, config.dist_timeout)
    try:
        _apply_threads(config)
        with distributed.sharding(info):  # under torchrun, each rank evaluates a share
            evaluation = family.evaluate(
                algo, config, Path(run_dir), num_tasks=num_tasks, steps=steps
            )
        if info.is_main:
            _write_json(Path(run_dir) / "eval.json", evaluation)
        distributed.barrier(info)
    finally:
        distributed.teardown(info)
    return evaluation


def evaluation_summary(evaluation: dict[str, Any]) -> str:
    """A few lines of eval.json for the terminal."""

    def shown(value: dict[str, Any]) -> str:
        mean, ci95 = value.get("mean"), value.get("ci95")
        if not isinstance(mean, int | float) or not math.isfinite(mean):
            return "not finite (adaptation diverged on some tasks)"
        return f"{mean:.4f} ± {ci95:.4f}" if isinstance(ci95, int | float) else f"{mean:.4f}"

    lines = [f"metric: {evaluation.get('metric')} over {evaluation.get('tasks')} held-out tasks"]
    baseline = evaluation.get("baseline", {}).get("by_steps", {})
    for step, value in evaluation.get("by_steps", {}).items():
        line = f"  after {step:>2} steps: {shown(value)}"
        if step in baseline:
            line += f"   (baseline {shown(baseline[step])})"
        lines.append(line)
    return "\n".join(lines)
