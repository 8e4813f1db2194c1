"""The Markdown report and its reading of the numbers."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from metaopt.registry import algorithms
from metaopt.tools.compare.options import (
    HELDOUT_KEY,
    LABELS,
    OTHER_BATCH,
    RATES_SUFFIX,
    REFERENCE,
    gradient_rows,
)

__all__ = ["agreement_cell", "interpret", "point_label", "render_report", "rows_of"]


def _fmt(value: float | None, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return f"{value:.{digits}g}" if abs(value) < 1e4 else f"{value:.3e}"


def _cos(value: float | None) -> str:
    if value is None or not math.isfinite(value):
        return "n/a"
    return f"{value:.4f}"


def point_label(iteration: int) -> str:
    return "init" if iteration == 0 else f"it {iteration}"


def rows_of(
    results: Mapping[str, Any], method: str, iteration: int | None = None
) -> list[Mapping[str, Any]]:
    return [
        r
        for r in results["gradients"]
        if r["method"] == method and (iteration is None or r["iteration"] == iteration)
    ]


def interpret(results: Mapping[str, Any]) -> list[str]:
    """One line per comparison, stating what was measured (no judgement)."""
    lines = []
    config = results["config"]
    steps = results["options"]["steps"]
    points = results["points"]
    batches = results["options"]["batches"]
    batch = f"mean over {batches} meta-batch{'es' * (batches > 1)} of {config['meta_batch']} tasks"
    for method in gradient_rows(results["methods"]):
        parts = []
        for iteration in points:
            rows = rows_of(results, method, iteration)
            cos = ", ".join(_cos(r["cosine"]) for r in rows)
            ratio = ", ".join(_fmt(r["norm_ratio"]) for r in rows)
            parts.append(f"{point_label(iteration)}: cosine {cos}; norm ratio {ratio}")
        specs = algorithms()
        rated = method.removesuffix(RATES_SUFFIX) if method not in specs else None
        label = specs[rated].label if rated in specs else ""
        if method == OTHER_BATCH:
            what = "second-order MAML on an independent meta-batch vs second-order MAML"
        elif label:
            what = f"of {label}'s learned rates, first-order vs second-order {label}"
        else:
            what = f"{LABELS[method]} vs second-order MAML"
        line = f"Gradients, {what} ({batch}), at {'/'.join(map(str, steps))} inner steps — "
        line += " | ".join(parts) + "."
        if method in specs and not specs[method].has_meta_objective:
            line += (
                f" {LABELS[method]}'s norm is of θ − θ̃ (parameter units), not of a loss gradient."
            )
        if label:
            norms = ", ".join(_fmt(r["reference_norm"]) for r in rows_of(results, method, 0))
            line += (
                f" At these points the rates are inner_lr, where {label}'s θ-gradient is "
                "second-order MAML's exactly (tested), so only the rates' are compared (after "
                "one inner step first order is exact for them: no Hessian enters); their "
                f"second-order meta-gradient norm at init: {norms}."
            )
        bad = [r for r in rows_of(results, method) if r["nonfinite_reference"] or r["nonfinite"]]
        if bad:
            other = "the other batch" if method == OTHER_BATCH else LABELS[method]
            line += (
                " Non-finite meta-gradients, left out: "
                + "; ".join(
                    f"{point_label(r['iteration'])}, {r['steps']} steps: MAML on "
                    f"{r['nonfinite_reference']}, {other} on {r['nonfinite']} of {batches}"
                    for r in bad
                )
                + "."
            )
        lines.append(line)
    timing = results["timing"]
    by = {(t["method"], t["steps"]): t for t in timing}
    for method in [m for m in results["methods"] if m != REFERENCE]:
        time_ratio = ", ".join(
            _fmt(by[(method, s)]["min_s"] / by[(REFERENCE, s)]["min_s"], 2) for s in steps
        )
        memory = []
        for field, what in (("saved_peak_bytes", "saved-tensor"), ("peak_bytes", "allocated")):
            if by[(method, steps[0])].get(field) is None:  # n/a for iMAML; absent in old reports
                continue
            ratios = (
                _fmt(_safe_div(by[(method, s)][field], by[(REFERENCE, s)][field]), 2) for s in steps
            )
            memory.append(f"; peak {what} bytes ×{', '.join(ratios)}")
        lines.append(
            f"Cost, {LABELS[method]} relative to second-order MAML at "
            f"{'/'.join(map(str, steps))} inner steps: wall time per meta-iteration (fastest of "
            f"{results['options']['repeats']}) ×{time_ratio}{''.join(memory)} "
            f"({results['threads']} torch thread(s))."
        )
    curves = results["curves"]
    if curves:
        key = results.get("family_curve_key")
        finals = []
        for method, curve in curves.items():
            last = curve["points"][-1]
            text = f"{LABELS[method]} {_fmt(last.get(HELDOUT_KEY), 4)}"
            if key and key in last:
                text += f" ({key} {_fmt(last[key], 4)})"
            text += f" after {_fmt(curve['train_seconds'], 3)} s"
            finals.append(text)
        iterations = max(c["iterations"] for c in curves.values())
        lines.append(
            f"Learning curves, {iterations} iterations from seed {config['seed']}, "
            f"{outer_steps(curves, config)}: "
            f"held-out post-adaptation query loss on {results['options']['heldout_tasks']} tasks "
            f"at the last point — " + "; ".join(finals) + " of training."
        )
    return lines


def outer_steps(curves: Mapping[str, Any], config: Mapping[str, Any]) -> str:
    """How the learning curves' runs took their outer steps: one optimiser for every method, or
    each method's where the family's ``auto`` chose per method (nav2d: trpo for MAML and
    Meta-SGD, adam for Reptile). Results written before runs recorded theirs name the config's."""
    taken = {m: c.get("outer_step", config["outer_optimizer"]) for m, c in curves.items()}
    rate = f"lr {config['outer_lr']}"
    if len(set(taken.values())) == 1:
        return f"same outer optimiser ({next(iter(taken.values()))}, {rate}) for every method"
    each = ", ".join(f"{step} for {LABELS[method]}" for method, step in taken.items())
    return f"outer step by method ({each}; {rate})"


def _bytes(count: int | None) -> str:
    if count is None:
        return "n/a"
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if count >= size:
            return f"{count / size:.2f} {unit}"
    return f"{count} B"


def agreement_cell(row: Mapping[str, Any], batches: int) -> str:
    """``cosine ± sd (×ratio)``, and how many meta-batches gave a non-finite meta-gradient."""
    excluded = max(row["nonfinite_reference"], row["nonfinite"])
    if row["cosine"] is None:
        return f"non-finite ({excluded}/{batches})"
    cell = f"{_cos(row['cosine'])} ± {row['cosine_sd']:.2f} (×{_fmt(row['norm_ratio'])})"
    return cell + (f" [{excluded}/{batches} non-finite]" if excluded else "")


def _safe_div(a: float, b: float) -> float:
    return a / b if b else math.nan


def render_report(results: Mapping[str, Any]) -> str:
    """The Markdown report of a `compare_methods` result."""
    config = results["config"]
    steps = results["options"]["steps"]
    methods = results["methods"]
    out = [f"# metaopt compare: {results['family']}", ""]
    out.append(
        f"Meta-batch {config['meta_batch']}, inner lr {config['inner_lr']} "
        f"({config['inner_optimizer']}), outer {config['outer_optimizer']} at {config['outer_lr']}, "
        f"seed {config['seed']}; runs of {config['iterations']} iterations with "
        f"{config['inner_steps']} inner step(s); engine {config.get('engine', 'loop')}; "
        f"{results['threads']} torch thread(s); torch {results['versions'].get('torch')}."
    )
    out += ["", "## What was measured", ""]
    out += [f"- {line}" for line in results["interpretation"]]

    out += ["", "## Meta-gradient agreement with second-order MAML", ""]
    out.append(
        "Cosine similarity over all of θ (mean ± standard deviation over "
        f"{results['options']['batches']} independent meta-batches of {config['meta_batch']} "
        "tasks), and the mean norm ratio ‖g‖/‖g_MAML‖ in parentheses, for each number of inner "
        "steps. Same tasks and same parameters for every method on each meta-batch; *MAML, other "
        "batch* compares second-order MAML on one meta-batch with second-order MAML on the next "
        "(the meta-batch sampling noise). Meta-SGD's row compares the meta-gradient of its "
        "learned rates, first-order Meta-SGD against second-order Meta-SGD: its θ-gradient is "
        "second-order MAML's at these points (rates at inner_lr) and would always read "
        "1.0000 (×1)."
    )
    out.append("")
    header = "| point | method | " + " | ".join(f"{s} step{'s' * (s > 1)}" for s in steps) + " |"
    out += [header, "|" + " --- |" * (2 + len(steps))]
    for iteration in results["points"]:
        for method in gradient_rows(methods):
            cells = [
                agreement_cell(r, results["options"]["batches"])
                for r in rows_of(results, method, iteration)
            ]
            out.append(
                f"| {point_label(iteration)} | {LABELS[method]} | " + " | ".join(cells) + " |"
            )

    layers = list(results["gradients"][0]["layers"]) if results["gradients"] else []
    if layers:
        out += ["", "### Per layer", ""]
        out.append("Cosine (norm ratio) of each module's parameters, means over the meta-batches.")
        out.append("")
        out += [
            "| point | steps | method | " + " | ".join(f"`{n}`" for n in layers) + " |",
            "|" + " --- |" * (3 + len(layers)),
        ]
        for r in results["gradients"]:
            cells = [
                f"{_cos(r['layers'][n]['cosine'])} (×{_fmt(r['layers'][n]['norm_ratio'])})"
                for n in layers
            ]
            out.append(
                f"| {point_label(r['iteration'])} | {r['steps']} | {LABELS[r['method']]} | "
                + " | ".join(cells)
                + " |"
            )

    out += ["", "## Cost per meta-iteration", ""]
    out.append(
        f"Wall time of `zero_grad` + `meta_backward` + outer step at initialisation: fastest of "
        f"{results['options']['repeats']} repetitions after a warm-up, then the median and "
        f"interquartile range in brackets; repetitions go round-robin over the methods; "
        f"{results['threads']} torch thread(s). Then the peak of the bytes autograd keeps saved "
        "for backward during one meta-iteration (n/a: the method runs `torch.func` transforms, "
        "which refuse the meter's saved-tensor hooks: iMAML), and the peak of torch's CPU "
        "allocator during one meta-iteration above what was live before (every method)."
    )
    out.append("")
    head = "| method | " + " | ".join(f"{s} step{'s' * (s > 1)}" for s in steps) + " |"
    rule = "|" + " --- |" * (1 + len(steps))
    by = {(t["method"], t["steps"]): t for t in results["timing"]}
    out += [head.replace("| method |", "| wall time |"), rule]
    for method in methods:
        cells = []
        for s in steps:
            t = by[(method, s)]
            cells.append(
                f"{t['min_s'] * 1e3:.1f} ms ({t['median_s'] * 1e3:.1f} "
                f"[{t['q1_s'] * 1e3:.1f}–{t['q3_s'] * 1e3:.1f}])"
            )
        out.append(f"| {LABELS[method]} | " + " | ".join(cells) + " |")
    out += ["", head.replace("| method |", "| saved tensors, peak |"), rule]
    for method in methods:
        cells = [_bytes(by[(method, s)]["saved_peak_bytes"]) for s in steps]
        out.append(f"| {LABELS[method]} | " + " | ".join(cells) + " |")
    if all("peak_bytes" in t for t in results["timing"]):  # reports before it have none
        out += ["", head.replace("| method |", "| allocated, peak |"), rule]
        for method in methods:
            cells = [_bytes(by[(method, s)]["peak_bytes"]) for s in steps]
            out.append(f"| {LABELS[method]} | " + " | ".join(cells) + " |")

    curves = results["curves"]
    if curves:
        key = results.get("family_curve_key")
        out += ["", "## Learning curves", ""]
        out.append(
            f"Full `metaopt train` runs from the same seed (directories under `runs/`); every "
            f"{results['curve_every']} iterations the held-out post-adaptation query loss on "
            f"{results['options']['heldout_tasks']} tasks"
            + (f" and the family's `{key}`" if key else "")
            + ". Training seconds exclude the evaluations. Final evaluation: the family's "
            "`eval.json`, at the trained number of inner steps."
        )
        out.append("")
        columns = ["method", "iterations", "training seconds", "held-out query loss"]
        if key:
            columns.append(key)
        columns.append("final eval (mean ± 95% CI)")
        out += ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
        for method, curve in curves.items():
            last = curve["points"][-1]
            final = curve["final_eval"].get("at_trained_steps") or {}
            cells = [
                LABELS[method],
                str(curve["iterations"]),
                f"{curve['train_seconds']:.1f}",
                _fmt(last.get(HELDOUT_KEY), 4),
            ]
            if key:
                cells.append(_fmt(last.get(key), 4))
            metric = curve["final_eval"].get("metric") or ""
            if "mean" in final:
                cells.append(f"{metric} {_fmt(final['mean'], 4)} ± {_fmt(final.get('ci95'), 2)}")
            else:
                cells.append("n/a")
            out.append("| " + " | ".join(cells) + " |")

    truth = results.get("truth")
    if truth:
        out += _truth_section(truth)

    out += ["", "## Files", ""]
    out.append(
        "`results.json` (everything above), `gradients.csv`, `timing.csv`, `curves.csv`, "
        "`cosine_vs_steps.png`"
        + (", `curves_iterations.png`, `curves_time.png`, `runs/<method>/`" if curves else "")
        + ", `config.json`."
    )
    return "\n".join(out) + "\n"


def _truth_section(truth: Mapping[str, Any]) -> list[str]:
    setting = truth["setting"]
    out = ["", "## Against the exact meta-gradient", ""]
    out.append(
        f"On a tiny MDP where the meta-objective M(θ) = E_τ[J(U(θ, τ))] is an exact sum "
        f"({setting['num_states']} states, {setting['num_actions']} actions, horizon "
        f"{setting['horizon']}, {setting['trajectories']} support episode(s) per inner step, "
        f"deterministic rewards, a tabular policy; inner lr {setting['inner_lr']}, "
        f"{setting['inner_steps']} step(s)), each estimator's mean over {setting['samples']} "
        f"samples ({setting['batches']} batches of {setting['copies']}) against ∇M, over the "
        "policy's parameters. The noise column is the standard error of the mean, relative to "
        "‖∇M‖: a relative error near it is noise. |z|max is the largest deviation in standard "
        "errors: an unbiased estimator stays within about 3.5. The variance is per sample, summed "
        "over the coordinates, in units of ‖∇M‖²."
    )
    out += [
        "",
        "| method | estimator | cosine | relative error | noise | max abs z | variance |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in truth["rows"]:
        out.append(
            f"| {LABELS.get(row['method'], row['method'])} | {row['estimator']} | "
            f"{_fmt(row['cosine'], 4)} | {_fmt(row['relative_error'], 3)} | "
            f"{_fmt(row['noise'], 3)} | {_fmt(row['max_abs_z'], 1)} | {_fmt(row['variance'], 3)} |"
        )
    for method, why in truth.get("not_applicable", {}).items():
        out += ["", f"{LABELS.get(method, method)}: {why}."]
    return out
