"""The files of a report: results.json, config.json, the CSV tables, report.md, the plots."""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from metaopt.tools.compare.plots import plot_cosines, plot_curves
from metaopt.tools.compare.report import render_report

__all__ = ["write_outputs"]


def _json_ready(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_ready(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_ready(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def _write_csv(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    columns = list(dict.fromkeys(k for row in rows for k in row))
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow(row)


def _gradient_csv_rows(results: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    for r in results["gradients"]:
        common = {"iteration": r["iteration"], "steps": r["steps"], "method": r["method"]}
        yield {
            **common,
            "layer": "all",
            "cosine": r["cosine"],
            "norm_ratio": r["norm_ratio"],
            "norm": r["norm"],
            "reference_norm": r["reference_norm"],
            "rates_grad_norm": r["rates_grad_norm"],
        }
        for layer, values in r["layers"].items():
            yield {**common, "layer": layer, **values}


def write_outputs(report: Path, results: dict[str, Any]) -> None:
    ready = _json_ready(results)
    (report / "results.json").write_text(json.dumps(ready, indent=2) + "\n")
    (report / "config.json").write_text(
        json.dumps(
            {
                key: ready[key]
                for key in ("family", "config", "options", "threads", "versions", "command")
            },
            indent=2,
        )
        + "\n"
    )
    _write_csv(report / "gradients.csv", list(_gradient_csv_rows(results)))
    _write_csv(report / "timing.csv", results["timing"])
    curve_rows = [
        {"method": method, **point}
        for method, curve in results["curves"].items()
        for point in curve["points"]
    ]
    if curve_rows:
        _write_csv(report / "curves.csv", curve_rows)
    (report / "report.md").write_text(render_report(results))
    plot_cosines(report / "cosine_vs_steps.png", results)
    if results["curves"]:
        plot_curves(report, results)
