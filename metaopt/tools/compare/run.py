"""The whole comparison: gradients at each point, the exact meta-gradient, costs, curves."""

from __future__ import annotations

import dataclasses
import platform
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import torch

from metaopt.registry import algorithm
from metaopt.tools.compare.curves import checkpoint_iterations, family_curve_key, run_curve
from metaopt.tools.compare.gradients import (
    comparison_seeds,
    initial_state,
    meta_gradients_on,
    summarize_batches,
)
from metaopt.tools.compare.options import (
    OTHER_BATCH,
    OTHER_BATCH_STREAM,
    REFERENCE,
    CompareOptions,
    ModelState,
    rates_row,
)
from metaopt.tools.compare.outputs import write_outputs
from metaopt.tools.compare.report import interpret
from metaopt.tools.compare.timing import Timing, time_meta_iterations
from metaopt.training import (
    TaskFamily,
    TrainConfig,
    TruthRequest,
    new_directory,
    package_versions,
    run_device,
)
from metaopt.training.progress import StepProgress

__all__ = ["compare_methods"]


def _prepare_report_dir(family: TaskFamily, report_dir: Path | str | None) -> Path:
    if report_dir is None:
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        report_dir = Path("reports") / f"compare-{family.name}-{stamp}"
    return new_directory(
        Path(report_dir),
        "--report",
        "choose a new directory (metaopt never overwrites a saved report)",
    )


def _steps(
    family: TaskFamily, what: str, total: int, unit: str, show: bool | None, lazy: bool = False
) -> StepProgress:
    return StepProgress(f"compare {family.name}: {what}", total, unit=unit, show=show, lazy=lazy)


def compare_methods(
    family: TaskFamily,
    config: TrainConfig,
    report_dir: Path | str | None = None,
    options: CompareOptions | None = None,
    *,
    progress: bool | None = None,
) -> dict[str, Any]:
    """Compare the meta-gradients, costs and learning curves of the algorithms on ``family``.

    Writes ``report.md``, ``results.json``, ``gradients.csv``, ``timing.csv``, ``curves.csv``,
    ``cosine_vs_steps.png``, ``curves_iterations.png``, ``curves_time.png`` and ``config.json``
    into ``report_dir``, and the runs into ``report_dir/runs/<method>``.

    Args:
        family: The task family.
        config: Its validated config; ``algo`` is ignored, ``inner_steps`` is the trained number
            of steps of the runs, ``iterations`` their length, ``meta_batch`` the comparison's.
        report_dir: A new or empty directory (default ``reports/compare-<family>-<time>``).
        options: What to measure (default `CompareOptions`).
        progress: Show progress bars; ``None`` shows them only when stderr is a terminal and
            otherwise logs progress lines (``metaopt.training.progress``), ``False`` neither.

    Returns:
        What ``results.json`` holds.

    Raises:
        ConfigError: for out-of-range options or a non-empty report directory.
    """
    options = options or CompareOptions()
    options.validate()
    config.validate()
    family.validate(config)
    run_device(config)  # --device this machine lacks: refused before the report directory
    report = _prepare_report_dir(family, report_dir)
    methods = options.all_methods
    initial = initial_state(family, config)
    seed: int | list[int] = config.seed
    checkpoints = checkpoint_iterations(config.iterations, options.checkpoints)
    every = options.curve_every or max(1, config.iterations // 20)

    # 1. The second-order run, whose snapshots are the later comparison points.
    curves: dict[str, Any] = {}
    states: dict[int, ModelState] = {0: initial}
    runs = report / "runs"
    if config.iterations > 0 and (checkpoints or options.curves):
        curves[REFERENCE], snapshots = run_curve(
            family,
            config,
            REFERENCE,
            runs / REFERENCE,
            every=every,
            heldout_tasks=options.heldout_tasks,
            snapshot_at=set(checkpoints),
            initial=initial,
            progress=progress,
        )
        states.update(snapshots)

    # 2. Meta-gradients at each point, for each number of inner steps, on each meta-batch.
    gradients: list[dict[str, Any]] = []
    seeds = comparison_seeds(config, options.batches)
    others = [m for m in methods if m != REFERENCE]
    points = len(states) * len(options.steps)
    with _steps(family, "meta-gradients", points, "point", progress) as bar:
        for iteration, state in sorted(states.items()):
            for steps in options.steps:
                at = (family, config, state, steps)
                references = meta_gradients_on(*at, REFERENCE, seeds)
                point = {"iteration": iteration, "steps": steps}
                for method in others:
                    if algorithm(method).learned_rates:  # its rates: first vs second order
                        second = [g.of_rates() for g in meta_gradients_on(*at, method, seeds)]
                        first = meta_gradients_on(*at, method, seeds, first_order=True)
                        name = rates_row(method)
                        summary = summarize_batches(second, [g.of_rates() for g in first])
                    else:
                        found = meta_gradients_on(*at, method, seeds)
                        name, summary = method, summarize_batches(references, found)
                    gradients.append({"method": name, **point, **summary})
                # Second-order MAML on another meta-batch: batch b against batch b + 1.
                if len(seeds) > 1:
                    shifted = references[1:] + references[:1]
                else:
                    shifted = meta_gradients_on(*at, REFERENCE, [[OTHER_BATCH_STREAM, config.seed]])
                gradients.append(
                    {"method": OTHER_BATCH, **point, **summarize_batches(references, shifted)}
                )
                bar.update(f"iteration {iteration}, {steps} inner step(s)")

    # 2b. Against the exact meta-gradient, where the family can compute one.
    truth = None
    if options.truth_batches:
        rows = 3 * len([m for m in methods if algorithm(m).has_meta_objective])
        # lazy: nothing shown for a family that computes no exact meta-gradient
        exact = _steps(family, "against the exact meta-gradient", rows, "row", progress, lazy=True)
        with exact as bar:
            request = TruthRequest(methods, options.truth_batches, bar.update)
            truth = family.compare_with_truth(config, request)

    # 3. Time and memory per meta-iteration, at initialisation.
    timing: list[Timing] = []
    with _steps(family, "timing", len(options.steps), "setting", progress) as bar:
        for steps in options.steps:
            timing += time_meta_iterations(
                family,
                config,
                methods,
                initial,
                steps=steps,
                repeats=options.repeats,
                task_seed=seed,
            )
            bar.update(f"{steps} inner step(s)")

    # 4. Learning curves of the other methods.
    if options.curves and config.iterations > 0:
        for method in methods:
            if method != REFERENCE:
                curves[method], _ = run_curve(
                    family,
                    config,
                    method,
                    runs / method,
                    every=every,
                    heldout_tasks=options.heldout_tasks,
                    snapshot_at=set(),
                    initial=initial,
                    progress=progress,
                )

    point_keys = [k for c in curves.values() for p in c["points"] for k in p]
    results: dict[str, Any] = {
        "family": family.name,
        "report_dir": str(report),
        "metric": family.metric,
        "config": config.to_dict(),
        "options": dataclasses.asdict(options),
        "methods": list(methods),
        "points": sorted(states),
        "curve_every": every,
        "family_curve_key": family_curve_key(list(dict.fromkeys(point_keys)), family.metric),
        "threads": torch.get_num_threads(),
        "machine": platform.machine(),
        "versions": package_versions(),
        "command": sys.argv,
        "gradients": gradients,
        "timing": [dataclasses.asdict(t) for t in timing],
        "curves": curves,
        "truth": truth,
    }
    results["interpretation"] = interpret(results)
    write_outputs(report, results)
    return results
