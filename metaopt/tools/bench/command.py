"""``metaopt bench``: run the registered cases, print the table, save the records."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import torch

from metaopt.options import PRECISIONS, check_choice
from metaopt.tools.bench.cases import Case, MemorySweep, domain_cases, memory_sweeps
from metaopt.tools.bench.flops import matmul_peak
from metaopt.tools.bench.memory import memory_sweep, plot_memory, sweep_table
from metaopt.tools.bench.timing import time_case
from metaopt.training import ConfigError, resolve_device
from metaopt.training.progress import StepProgress

__all__ = ["run_bench"]


def run_bench(
    *,
    quick: bool = False,
    threads: int | None = None,
    repeats: int | None = None,
    min_sample_s: float = 0.01,
    cases: Sequence[str] | None = None,
    memory: bool = True,
    compiled: bool = True,
    json_path: Path | None = None,
    plot_path: Path | None = None,
    echo: Callable[[str], None] = print,
    progress: bool | None = None,
    device: str = "cpu",
    precision: str = "fp32",
) -> list[dict[str, Any]]:
    """Run the benchmark; print the table; return (and optionally save) the records.

    The cases are those the installed packages register (`domain_cases`); ``cases`` selects
    some by name (a group's name selects its ``group/...`` cases), and without it every case
    runs but those that run only on request (`Case.on_request`). ``plot_path`` receives the
    first memory sweep's plot (a further sweep's goes next to it, its name appended to the
    file's stem). ``compiled=False`` leaves out the
    implementations that compile on their first call (`Case.compiled`: the sine cases'
    ``metaopt-compiled`` rows, whose compiles take most of a full bench's time); with them, their
    rows carry ``compile_s`` and ``compile_cache`` and the table a column ``compile s``.
    ``min_sample_s``: each timed sample is a block of back-to-back calls at least this long
    (`time_case`; 0: one call per sample). ``progress``: a bar
    over the parts (the matmul peak, each case, each memory sweep) on a terminal and lines off it
    (``None``), the bar (``True``) or neither (``False``); see ``StepProgress``.
    ``device`` (``--device``): the cases are built and run there (off the CPU, each call
    synchronised, and without the memory sweep and the matmul peak, which measure the CPU);
    ``precision``: every implementation under autocast (`Case.on`).

    Raises:
        ConfigError: ``cases`` names a case no domain registers, or ``device`` / ``precision``
            is not one this machine has.
    """
    on = resolve_device(device)
    check_choice("--precision", precision, PRECISIONS)
    with ExitStack() as stack:
        if on.type != "cpu":  # factories make the cases' tensors there (no mode on the CPU)
            stack.enter_context(torch.device(on))
        if threads is not None:
            torch.set_num_threads(threads)
        threads = torch.get_num_threads()
        repeats = repeats or (3 if quick else 15)
        all_cases = domain_cases(quick)
        sweeps = memory_sweeps(all_cases)
        if cases:
            # A name selects its case, or every sub-case of a group (``group/variant``).
            known = {c.name for c in all_cases} | {c.name.partition("/")[0] for c in all_cases}
            unknown = sorted(set(cases) - known)
            if unknown:
                names = ", ".join(c.name for c in all_cases)
                raise ConfigError(
                    f"--cases: unknown case(s) {', '.join(unknown)}; available: {names}"
                )
            all_cases = [c for c in all_cases if {c.name, c.name.partition("/")[0]} & set(cases)]
        else:
            all_cases = [c for c in all_cases if not c.on_request]
        if not compiled:
            all_cases = [c.without_compiled() for c in all_cases]
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
        all_cases = [c.on(on, dtype) for c in all_cases]
        if min_sample_s < 0:
            raise ConfigError(f"--min-sample-ms must be at least 0, got {min_sample_s * 1e3:g}")
        block = (
            f", each a block of calls of at least {min_sample_s * 1e3:g} ms"
            if min_sample_s > 0
            else ""
        )
        echo(
            f"metaopt bench: {threads} thread(s), median of {repeats} repetitions{block}, "
            f"torch {torch.__version__}, {on}, {precision}"
        )
        with_peak = on.type == "cpu" and any(case.flops_from is not None for case in all_cases)
        parts = (
            int(with_peak) + len(all_cases) + (len(sweeps) if memory and on.type == "cpu" else 0)
        )
        with StepProgress("bench", parts, unit="part", show=progress) as bar:
            return _run(
                all_cases,
                sweeps if memory and on.type == "cpu" else [],
                with_peak=with_peak,
                quick=quick,
                threads=threads,
                repeats=repeats,
                min_sample_s=min_sample_s,
                json_path=json_path,
                plot_path=plot_path,
                echo=bar.printer(echo),
                bar=bar,
            )


def _run(
    all_cases: Sequence[Case],
    sweeps: Sequence[MemorySweep],
    *,
    with_peak: bool,
    quick: bool,
    threads: int,
    repeats: int,
    min_sample_s: float,
    json_path: Path | None,
    plot_path: Path | None,
    echo: Callable[[str], None],
    bar: StepProgress,
) -> list[dict[str, Any]]:
    """The timing, the table and the memory sweeps of `run_bench`, one ``bar`` step each."""
    records: list[dict[str, Any]] = []
    peak: float | None = None
    if with_peak:
        measured = matmul_peak(target_s=0.01 if quick else 0.05, repeats=3 if quick else 10)
        measured["threads"] = threads
        records.append(measured)
        peak = measured["flop_per_s"]
        size = measured["size"]
        echo(
            f"matmul peak: torch.mm {size}×{size} float32, {peak / 1e9:.1f} GFLOP/s "
            f"({measured['time_s'] * 1e3:.1f} ms, median of {3 if quick else 10})"
        )
        bar.update("matmul peak")
    for case in all_cases:
        timed = time_case(
            case,
            repeats=min(repeats, case.max_repeats or repeats),
            warmup=1 if quick or case.max_repeats else 3,
            min_sample_s=min_sample_s,
        )
        echo(f"\n{case.name}: {case.description}")
        flops = timed[case.flops_from]["flops"] if case.flops_from and peak else None
        if flops is not None:
            echo(
                f"  {flops / 1e9:.2f} GFLOP per meta-iteration (FlopCounterMode, {case.flops_from})"
            )
        width = max(16, *(len(name) for name in timed))
        header = (
            f"  {'implementation':{width}s} {'median ms':>10s} {'calls':>5s}"
            + "".join(f" {'× vs ' + r:>18s}" for r in case.ratios_to)
            + f" {'rel. grad diff':>15s}"
            + (f" {'GFLOP/s':>9s} {'% of peak':>10s}" if flops is not None else "")
            + (f" {'compile s':>15s}" if case.compiled else "")
            + (f" {'cores':>5s} {'steps/s/core':>12s}" if case.steps is not None else "")
        )
        echo(header)
        for name, fields in sorted(timed.items(), key=lambda item: item[1]["median_s"]):
            row = {"case": case.name, "impl": name, "threads": threads, **fields}
            ratios = {}
            for baseline in case.ratios_to:
                ratios[baseline] = timed[baseline]["median_s"] / fields["median_s"]
                row[f"speedup_vs_{baseline}"] = ratios[baseline]
            flop_columns = ""
            if flops is not None:
                assert peak is not None
                row["flop_per_s"] = flops / fields["median_s"]
                row["peak_fraction"] = row["flop_per_s"] / peak
                flop_columns = f" {row['flop_per_s'] / 1e9:9.2f} {row['peak_fraction'] * 100:10.1f}"
            compile_column = ""  # the last column: blank in the rows that do not compile
            if name in case.compiled:
                row.update(case.compiled[name]())
                cache = row["compile_cache"] or "no cache"
                compile_column = f" {row['compile_s']:6.1f} {cache:>8s}"
            steps_column = ""
            if case.steps is not None:
                row["cores"] = case.cores.get(name, threads)
                row["steps_per_second"] = case.steps / fields["median_s"]
                row["steps_per_second_per_core"] = row["steps_per_second"] / row["cores"]
                steps_column = f" {row['cores']:5d} {row['steps_per_second_per_core']:12.0f}"
            records.append(row)
            diff = fields["max_rel_grad_diff"]
            echo(
                f"  {name:{width}s} {fields['median_s'] * 1e3:10.2f}"
                + f" {fields['calls_per_sample']:5d}"
                + "".join(f" {ratios[b]:18.2f}" for b in case.ratios_to)
                + (f" {diff:15.1e}" if diff is not None else f" {'(stochastic)':>15s}")
                + flop_columns
                + compile_column
                + steps_column
            )
        bar.update(case.name)
    if sweeps:
        steps = (1, 2, 5) if quick else (1, 2, 5, 10, 20)
        for index, sweep in enumerate(sweeps):
            measured_sweep = memory_sweep(sweep, steps)
            echo(f"\npeak memory of one meta-iteration (MiB), {sweep.description}:")
            table = sweep_table(sweep, measured_sweep)
            width = max(11, *(len(algo) for algo in table))
            echo(f"  {'inner steps':{width}s} " + "".join(f"{k:>8d}" for k in steps))
            for algo, peaks in table.items():
                echo(f"  {algo:{width}s} " + "".join(f"{v / 2**20:8.2f}" for v in peaks))
            for row in measured_sweep:
                row["threads"] = threads
            records.extend(measured_sweep)
            if plot_path is not None:
                path = Path(plot_path)
                if index:
                    path = path.with_name(f"{path.stem}-{sweep.name}{path.suffix}")
                plot_memory(sweep, steps, measured_sweep, path)
            bar.update(f"memory, {sweep.name}")
    if json_path is not None:
        Path(json_path).write_text(json.dumps(records, indent=2) + "\n")
    return records
