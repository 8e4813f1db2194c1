"""`metaopt bench`'s Omniglot cases (supervised/bench.py) and the FLOP/s figures they report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from benchmarks import bench_omniglot as omniglot_bench
from metaopt.cli import main
from metaopt.tools.bench import count_flops, matmul_peak, run_bench

CASES = ("omniglot-maml-1step", "omniglot-maml-5step")
IMPLS = {"metaopt-vmap", "metaopt-loop", "torchopt-loop"}


def test_quick_omniglot_cases_agree_and_report_flops(tmp_path: Path, capsys) -> None:
    path = tmp_path / "bench.json"
    argv = ["bench", "--quick", "--threads", "1", "--repeats", "1", "--no-memory"]
    assert main([*argv, "--cases", ",".join(CASES), "--json", str(path)]) == 0
    out = capsys.readouterr().out
    assert "matmul peak: torch.mm" in out and "GFLOP/s" in out and "% of peak" in out
    records = json.loads(path.read_text())
    (peak,) = [r for r in records if r["case"] == "matmul-peak"]
    assert peak["threads"] == 1 and peak["flops"] == 2 * peak["size"] ** 3
    assert peak["flop_per_s"] == pytest.approx(peak["flops"] / peak["time_s"])
    assert peak["flop_per_s"] > 0
    for case in CASES:
        rows = [r for r in records if r["case"] == case]
        assert {r["impl"] for r in rows} == IMPLS
        assert len({r["flops"] for r in rows}) == 1  # one count stands for every implementation
        for row in rows:
            assert row["threads"] == 1 and row["median_s"] > 0
            assert row["max_rel_grad_diff"] <= omniglot_bench.TOLERANCE
            assert row["flops"] > 0
            assert row["flop_per_s"] == pytest.approx(row["flops"] / row["median_s"])
            assert row["peak_fraction"] == pytest.approx(row["flop_per_s"] / peak["flop_per_s"])
            assert {"speedup_vs_metaopt-loop", "speedup_vs_torchopt-loop"} <= set(row)
    one, five = (next(r["flops"] for r in records if r["case"] == case) for case in CASES)
    assert five > 2 * one  # four more differentiable inner steps, each a forward and backward


def test_vmapped_meta_iteration_counts_the_loops_flops() -> None:
    cases = {case.name: case for case in omniglot_bench.cases(quick=True)}
    for name in CASES:
        impls = cases[name].impls
        counts = {impl: count_flops(impls[impl]) for impl in IMPLS}
        assert len(set(counts.values())) == 1, counts


def test_grouped_convolution_backward_is_counted_per_group() -> None:
    groups, n, c = 4, 3, 6
    x = torch.randn(n, groups * c, 8, 8, requires_grad=True)
    w = torch.randn(groups * c, c, 3, 3, requires_grad=True)
    grouped = count_flops(lambda: F.conv2d(x, w, groups=groups, padding=1).sum().backward())

    def separate() -> None:
        for g in range(groups):
            xg = x[:, g * c : (g + 1) * c].detach().requires_grad_()
            wg = w[g * c : (g + 1) * c].detach().requires_grad_()
            F.conv2d(xg, wg, padding=1).sum().backward()

    forward = 2 * n * 8 * 8 * groups * c * c * 9
    assert grouped == count_flops(separate) == 3 * forward  # forward, input and weight gradients


def test_matmul_peak_record() -> None:
    record = matmul_peak(target_s=0.001, repeats=2)
    assert record["case"] == "matmul-peak" and 256 <= record["size"] <= 4096
    assert record["size"] % 128 == 0
    assert record["flop_per_s"] > 0 and record["time_s"] > 0


def test_listing_the_cases_loads_no_images() -> None:
    omniglot_bench._workload_on.cache_clear()
    names = [case.name for case in omniglot_bench.cases(quick=False)]
    assert names == list(CASES)
    assert omniglot_bench._workload_on.cache_info().currsize == 0


def test_cases_without_flops_keep_their_records() -> None:
    records = run_bench(
        quick=True, repeats=1, cases=["sine-maml-1step"], memory=False, echo=lambda _: None
    )
    assert {r["case"] for r in records} == {"sine-maml-1step"}  # no matmul-peak record
    for record in records:
        assert not {"flops", "flop_per_s", "peak_fraction"} & set(record)
