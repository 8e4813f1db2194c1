"""The printed table of ``metaopt scale``."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from metaopt.tools.scale.options import ParameterAgreement, ScaleOptions
from metaopt.training import TrainConfig

__all__ = ["render_table"]


def render_table(
    summary: Sequence[Mapping[str, Any]],
    *,
    family: str,
    flags: Sequence[str],
    config: TrainConfig,
    options: ScaleOptions,
    agreement: ParameterAgreement,
) -> str:
    """The printed report: setting, one row per process count, and the parameter agreement."""
    base = summary[0]["processes"]
    shown_flags = " ".join(flags) if flags else "(the family's defaults)"
    process_word = "process" if base == 1 else "processes"
    periodic = (
        f"periodic evaluation every {config.eval_every} iterations"
        if config.eval_every
        else "no periodic evaluation"
    )
    lines = [
        f"metaopt scale {family}: processes {','.join(map(str, options.processes))}, "
        f"{options.threads} thread(s) per process (OMP_NUM_THREADS={options.threads}), "
        f"{os.cpu_count()} CPU(s), torch {torch.__version__}",
        f"  flags: {shown_flags}",
        f"  config: {config.algo}, meta-batch {config.meta_batch}, {config.iterations} "
        f"iterations, {periodic}, final evaluation on {config.eval_tasks} tasks",
        f"  medians over {options.repeats} repeat(s); speed-up = median at {base} "
        f"{process_word} / median at N",
        "",
        f"  {'processes':>9s} {'ms/iteration':>13s} {'speed-up':>9s} {'training s':>11s} "
        f"{'speed-up':>9s} {'wall s':>8s} {'speed-up':>9s}",
    ]
    for row in summary:
        lines.append(
            f"  {row['processes']:9d} {row['iteration_seconds'] * 1e3:13.2f} "
            f"{row['speedup_iteration_seconds']:8.2f}× {row['train_seconds']:11.2f} "
            f"{row['speedup_train_seconds']:8.2f}× {row['wall_seconds']:8.2f} "
            f"{row['speedup_wall_seconds']:8.2f}×"
        )

    def verdict(value: float) -> str:
        return "agree" if value <= options.tolerance else "DIFFER"

    lines += [
        "",
        f"  final meta-parameters, largest relative difference (tolerance {options.tolerance:g}):",
        f"    across process counts after {agreement.check_iterations} iteration(s): "
        f"{agreement.across_counts:.2g} ({verdict(agreement.across_counts)})",
        f"    across repeats of each process count: {agreement.across_repeats:.2g} "
        f"({verdict(agreement.across_repeats)})",
    ]
    if agreement.check_iterations < config.iterations:
        parted = (
            f"the logged numbers first differ by more than {options.tolerance:g} at iteration "
            f"{agreement.first_divergence}"
            if agreement.first_divergence is not None
            else "the logged numbers agree at every iteration"
        )
        lines.append(
            f"    across process counts after {config.iterations} iterations: "
            f"{agreement.timed_across_counts:.2g} (not checked: {parted})"
        )
    if agreement.largest_metric_difference is not None:
        lines.append(
            f"  logged numbers (metrics.jsonl) across process counts over all {config.iterations} "
            f"iterations, largest relative difference: {agreement.largest_metric_difference:.2g} "
            f"({agreement.largest_metric} at iteration {agreement.largest_metric_iteration}; "
            + (
                f"first above {options.tolerance:g} at iteration {agreement.first_divergence})"
                if agreement.first_divergence is not None
                else f"never above {options.tolerance:g})"
            )
        )
    return "\n".join(lines)
