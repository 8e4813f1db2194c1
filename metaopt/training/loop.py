"""The one meta-training loop. It knows nothing about sine curves or MDPs: families plug in.

Each iteration draws a meta-batch from the loop's own generator, has the algorithm compute the
meta-gradient (under torchrun, of this rank's shard, all-reduced), takes the outer step and writes
a row of ``metrics.jsonl``; checkpoints, signals and periodic evaluation (with the best checkpoint
on validation tasks, `metaopt.training.selection`) come at fixed points, and
[`TrainingHooks`][metaopt.training.TrainingHooks] are called at others. A non-finite loss or
meta-gradient stops training after saving the last good state, or with ``skip_nonfinite`` skips the
batch and counts it. After the last iteration the family evaluates (the best checkpoint, when
the family selects one) and plots.

The run's clock (``seconds`` in each row and in checkpoints) is the wall-clock time of training
alone: the hooks and the periodic evaluation are kept out of it.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import IO, Any, NoReturn

import numpy as np
import torch
from torch.nn.utils import clip_grad_norm_
from tqdm.auto import tqdm

from metaopt.algorithms import MetaLearner, MetaMetrics
from metaopt.training import distributed, selection
from metaopt.training.build import (
    apply_threads,
    build_algorithm,
    build_outer_optimizer,
    check_adapt,
    seed_everything,
)
from metaopt.training.device import autocast, grad_scaler, run_device
from metaopt.training.family import ConfigError, EvalRequest, TaskFamily, TrainConfig
from metaopt.training.hooks import TrainingHooks
from metaopt.training.memory import check_memory
from metaopt.training.progress import LOGGER, ProgressLog, compile_notice, restart_rate
from metaopt.training.rundir import (
    finite_or_none,
    new_run_dir,
    record_device,
    record_engine,
    write_json,
)
from metaopt.training.schedules import apply_schedules
from metaopt.training.signals import StopOnSignal, TrainingInterrupted
from metaopt.training.state import Run, random_state, save
from metaopt.trust_region import trust_region_step

__all__ = [
    "WALL_TIME_KEYS",
    "NonFiniteError",
    "check_iterations_to_train",
    "check_ranks",
    "fit",
    "new_run",
    "train",
]

#: Row keys that differ between two otherwise identical runs (wall-clock time).
WALL_TIME_KEYS = ("seconds",)

#: How an error message names each per-task loss of `MetaMetrics`.
_QUANTITIES = {
    "support_before": "support loss (before adaptation)",
    "support_after": "support loss (after adaptation)",
    "query": "query loss",
}


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
        config: A validated config (see
            [`metaopt.training.resolve_config`][metaopt.training.resolve_config]).
        progress: Show a progress bar; ``None`` shows one when stderr is a terminal and otherwise
            logs a line every tenth of the run or minute (`metaopt.training.progress`).
        hooks: Called at fixed points of each iteration
            ([`TrainingHooks`][metaopt.training.TrainingHooks]); their time and the periodic
            evaluation's are kept out of the run's clock.

    Raises:
        ConfigError: a config value out of range, or ``config.out`` not empty.
        NonFiniteError: a NaN/inf loss or meta-gradient (without ``skip_nonfinite``).
        TrainingInterrupted: SIGINT or SIGTERM; the run can be continued with
            [`metaopt.training.resume`][metaopt.training.resume].
    """
    check_iterations_to_train(config.iterations)  # first: one bound for --iterations, not two
    config.validate()
    family.validate(config)
    check_memory(family, config)
    check_adapt(family, config)
    device = run_device(config)  # a device this machine lacks is refused before anything is written
    info = distributed.setup(config.dist_backend, config.dist_timeout, device)
    try:
        check_ranks(config, info)
        apply_threads(config)
        with ExitStack() as owned:  # rank 0 holds the run directory's lock until the end
            run_dir = distributed.on_main(
                lambda: new_run_dir(family, config, info.world_size, owned), info
            )
            return fit(new_run(family, config, run_dir, info, hooks), progress)
    finally:
        distributed.teardown(info)


def check_iterations_to_train(iterations: object) -> None:
    """Refuse an ``--iterations`` below 1 for training, before the config's own check (which
    allows 0: compare measures at initialisation), so that the message gives one bound.

    Raises:
        ConfigError: ``iterations`` is not an integer >= 1.
    """
    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1:
        raise ConfigError(
            f"--iterations must be an integer >= 1 to train, got {iterations!r}; "
            "metaopt eval RUN_DIR re-evaluates a trained run"
        )


def new_run(
    family: TaskFamily,
    config: TrainConfig,
    run_dir: Path,
    info: distributed.DistInfo,
    hooks: Sequence[TrainingHooks],
) -> Run:
    """A run at iteration 0: model, algorithm, optimiser and generator from ``config.seed``
    (also what a resume without a checkpoint starts from, so it equals a fresh run)."""
    seed_everything(config.seed)
    model = family.make_model(config)
    algo = build_algorithm(config, model)
    outer, schedule = build_outer_optimizer(config, algo)
    rng = np.random.default_rng(config.seed)
    device = run_device(config)
    return Run(
        family,
        config,
        run_dir,
        algo,
        outer,
        schedule,
        rng,
        dist=info,
        hooks=hooks,
        device=device,
        scaler=grad_scaler(config, device),
    )


def check_ranks(config: TrainConfig, info: distributed.DistInfo) -> None:
    """Under torchrun: every rank gets a task of each meta-batch and trains the same config."""
    if info.active:
        distributed.shard_bounds(config.meta_batch, info.rank, info.world_size)
        distributed.check_same_config(config.to_dict(), info)


def fit(run: Run, progress: bool | None) -> Path:
    """Train ``run`` from ``run.iteration`` to ``config.iterations``, then evaluate and plot."""
    stop = StopOnSignal(run)
    metrics_path = run.run_dir / "metrics.jsonl" if run.dist.is_main else Path(os.devnull)
    if run.dist.is_main:
        record_device(run.run_dir, str(run.device))
        if progress is not False:
            LOGGER.info(
                "%s/%s: on %s (--device %s), %s",
                run.family.name,
                run.config.algo,
                run.device,
                run.config.device,
                run.config.precision,
            )
    for hook in run.hooks:
        hook.on_train_start(run.run_dir, run.config, run.iteration)
    with stop.installed(), open(metrics_path, "a") as log:
        _loop(run, log, stop, progress)
        for hook in run.hooks:
            hook.on_train_end(run.algo, run.config)
        if run.saved != run.iteration:
            save(run, log=log)
        stop.stop_if_asked(log)
    family, config, algo = run.family, run.config, run.algo
    selected = selection.use_best(run)  # the parameters chosen on validation tasks
    if run.dist.is_main and progress is not False:
        chosen = "" if selected is None else f" {selection.describe(selected)}"
        LOGGER.info("%s/%s: evaluating%s on held-out tasks", family.name, config.algo, chosen)
    stage = "evaluation"
    try:
        # Every rank evaluates its share of the held-out tasks.
        with autocast(config, run.device):
            evaluation = family.evaluate(algo, config, run.run_dir, EvalRequest(group=run.dist))
        if selected is not None:
            evaluation["selected"] = selected
        if not run.dist.is_main:  # rank 0 writes and plots; the others wait for it
            distributed.barrier(run.dist)
            return run.run_dir
        if run.solve_skipped or algo.describe().get("on_solve_failure") == "skip":
            evaluation["solve_skipped"] = run.solve_skipped
        write_json(run.run_dir / "eval.json", evaluation)
        stage = "plots"
        from metaopt.training.plots import plot_run

        plot_run(family, config, algo, run.run_dir, evaluation)
    except KeyboardInterrupt as error:  # training is complete and saved: say how to finish
        raise _interrupted_evaluation(run, stage) from error
    for hook in run.hooks:
        hook.on_run_end(run.run_dir, evaluation)
    distributed.barrier(run.dist)
    return run.run_dir


def _interrupted_evaluation(run: Run, stage: str) -> TrainingInterrupted:
    """Ctrl-C during the final evaluation or its plots: the trained run is on disk; ``metaopt
    eval`` writes eval.json and the plots from it."""
    return TrainingInterrupted(
        f"interrupted during the final {stage}; training is "
        f"complete (iteration {run.iteration}, saved in {run.checkpoint}); write eval.json and "
        f"the plots with: metaopt eval {run.run_dir}",
        signum=signal.SIGINT,
        iteration=run.iteration,
        checkpoint=run.checkpoint,
    )


class _Clock:
    """The run's training time: wall-clock time since the run began, less the pauses."""

    def __init__(self, seconds: float) -> None:
        self.start = time.perf_counter() - seconds

    def seconds(self) -> float:
        return time.perf_counter() - self.start

    @contextmanager
    def paused(self) -> Iterator[None]:
        """Time spent in the block does not count."""
        began = time.perf_counter()
        try:
            yield
        finally:
            self.start += time.perf_counter() - began


def _loop(run: Run, log: IO[str], stop: StopOnSignal, progress: bool | None) -> None:
    family, config, algo, outer = run.family, run.config, run.algo, run.outer
    params = algo.meta_parameters()
    recorded_engine: str | None = None
    clock = _Clock(run.seconds)
    disable = (None if progress is None else not progress) if run.dist.is_main else True
    hooks = tuple(run.hooks)
    if progress is None and run.dist.is_main and not sys.stderr.isatty():
        label = f"{family.name}/{config.algo}"
        hooks += (ProgressLog(label, config.iterations, describe=family.progress_text),)
    compiling = compile_notice(algo)
    with tqdm(
        total=config.iterations,
        initial=run.iteration,
        desc=f"{family.name}/{config.algo}",
        disable=disable,
    ) as bar:
        if compiling is not None:
            bar.set_postfix_str(compiling)
        for iteration in range(run.iteration + 1, config.iterations + 1):
            with clock.paused():
                for hook in hooks:
                    hook.on_iteration_start(iteration, algo)
            apply_schedules(algo, config, iteration)  # MAML++'s per-iteration settings
            before = random_state(run.rng)  # what a checkpoint of the last good state holds
            # Every rank draws the whole meta-batch and adapts to its shard of it.
            tasks = family.sample_tasks(config, run.rng, config.meta_batch)
            local = distributed.shard(tasks, run.dist)
            outer.zero_grad(set_to_none=True)
            # fp16: the losses are multiplied by the scaler's scale, the gradient divided again
            loss_scale = 1.0 if run.scaler is None else _loss_scale(run.scaler, run.device)
            with autocast(config, run.device):
                metrics = algo.meta_backward(local, scale=loss_scale / len(tasks))
            if algo.last_engine != recorded_engine:
                recorded_engine = algo.last_engine
                if run.dist.is_main:
                    record_engine(run.run_dir, recorded_engine)
            extra = family.iteration_metrics(local)
            if run.dist.active:
                distributed.all_reduce_gradients(params, run.dist)
                metrics = _gathered(metrics, len(tasks), run.dist)
                extra = distributed.weighted_means(extra, len(local), len(tasks), run.dist)
            if run.scaler is not None:  # an overflow lowers the scale and skips the step
                run.scaler.unscale_(outer)
            problem = _non_finite(metrics, algo, gradients=run.scaler is None)
            if problem is not None and not config.skip_nonfinite:
                _stop_non_finite(run, problem, iteration, tasks, before, log)
            # The algorithm asked for no step (iMAML's skipped solve): every rank skips alike.
            dropped = distributed.any_rank(metrics.dropped, run.dist)
            if problem is None and dropped:
                outer.zero_grad(set_to_none=True)
                run.solve_skipped += 1
            elif problem is None:
                if config.clip_grad_norm:  # the norm before clipping goes into the metrics
                    extra["grad_norm"] = clip_grad_norm_(params, config.clip_grad_norm).item()
                if config.outer_step == "trpo":  # moves what the divergence reaches
                    region, settings = family.trust_region(algo, config, local)
                    reduce = distributed.task_weighted_sum(len(local), len(tasks), run.dist)
                    extra.update(trust_region_step(params, region, settings, reduce).metrics())
                if run.scaler is not None:
                    run.scaler.step(outer)
                else:
                    outer.step()
                if not bool(torch.stack([torch.isfinite(p).all() for p in params]).all()):
                    latest = (
                        f"the latest checkpoint is iteration {run.saved} in {run.checkpoint}"
                        if run.saved is not None
                        else "the run has no checkpoint yet"
                    )
                    raise NonFiniteError(
                        f"iteration {iteration}: the outer step made a meta-parameter non-finite "
                        f"(outer learning rate too large?); nothing saved, {latest}",
                        iteration=iteration,
                        checkpoint=run.checkpoint if run.saved is not None else None,
                    )
            else:
                outer.zero_grad(set_to_none=True)
                run.skipped += 1
            if run.scaler is not None:
                run.scaler.update()
            if run.schedule is not None:  # the rate follows the iteration, skipped or not
                run.schedule.step()
            run.iteration = iteration
            run.seconds = clock.seconds()
            row: dict[str, Any] = {
                "iteration": iteration,
                "seconds": round(run.seconds, 4),
                **metrics.means(),
                **extra,
            }
            if config.skip_nonfinite:
                row["skipped"] = run.skipped
            if metrics.extra:
                row["solve_skipped"] = run.solve_skipped
            if run.scaler is not None:
                row["grad_scale"] = run.scaler.get_scale()
            if selection.validates(run, iteration):
                with clock.paused(), autocast(config, run.device):  # each rank: a share
                    row.update(family.periodic_eval(algo, config, group=run.dist))
                    for hook in hooks:
                        row.update(hook.on_evaluation(iteration, algo, config))
                    row.update(selection.keep_best(run, row))  # best.pt
            row = {key: finite_or_none(value) for key, value in row.items()}
            log.write(json.dumps(row) + "\n")
            log.flush()
            with clock.paused():
                for hook in hooks:
                    hook.on_iteration_end(iteration, row)
            if config.checkpoint_every and iteration % config.checkpoint_every == 0:
                save(run, log=log)
            stop.stop_if_asked(log)
            described = family.progress_text(row)  # RL: the returns, not the surrogate losses
            if described is not None:
                bar.set_postfix_str(described, refresh=False)
            elif row["query"] is not None:
                bar.set_postfix(query=f"{row['query']:.4g}", refresh=False)
            bar.update()
            if compiling is not None:  # the compile stays out of the rate and the ETA
                compiling = None
                restart_rate(bar)


def _loss_scale(scaler: torch.amp.GradScaler, device: torch.device) -> float:
    """What fp16's scaler multiplies a loss by now (scaling a one also starts its state, which
    ``meta_backward``, scaling its losses itself, would otherwise leave unset)."""
    return float(scaler.scale(torch.ones((), device=device)))


def _gathered(metrics: MetaMetrics, num_tasks: int, info: distributed.DistInfo) -> MetaMetrics:
    """Every rank's per-task losses, in task order, on every rank (one collective); the
    algorithm's own numbers, each the worst over a rank's tasks, the worst over the ranks."""
    rows = torch.stack([metrics.support_before, metrics.support_after, metrics.query])
    gathered = MetaMetrics(*distributed.gather_tasks(rows, num_tasks, info).unbind(0))
    gathered.extra = distributed.maxima(metrics.extra, info)
    gathered.dropped = metrics.dropped
    return gathered


def _non_finite(
    metrics: Any, algo: MetaLearner, *, gradients: bool = True
) -> tuple[str, int | None] | None:
    """(what is wrong, task index) for the first NaN/inf among task losses and meta-gradient
    (the losses alone without ``gradients``: fp16's scaler skips a step that overflowed)."""
    for quantity, described in _QUANTITIES.items():
        values = getattr(metrics, quantity)
        bad = (~torch.isfinite(values)).nonzero().flatten()
        if len(bad):
            task = int(bad[0])
            return f"{described} of task {task} is {values[task].item()}", task
    for index, p in enumerate(algo.meta_parameters() if gradients else ()):
        if p.grad is not None and not bool(torch.isfinite(p.grad).all()):
            shape = tuple(p.shape)
            return f"meta-gradient of meta-parameter {index} (shape {shape}) is not finite", None
    return None


def _stop_non_finite(
    run: Run,
    problem: tuple[str, int | None],
    iteration: int,
    tasks: Sequence[Any],
    before: dict[str, Any],
    log: IO[str],
) -> NoReturn:
    """Save the last good state (the parameters are still those, and ``before`` is its random
    state) and raise [`NonFiniteError`][metaopt.training.NonFiniteError], naming the task to blame
    where one can be found."""
    saved = save(run, before, log=log) if run.saved != run.iteration else run.checkpoint
    message, task = problem
    if task is None and not run.dist.active:
        culprit = _task_with_non_finite_gradient(run.algo, tasks)
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
