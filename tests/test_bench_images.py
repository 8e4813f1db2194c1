"""`metaopt bench`'s ``images-conv4-5w1s`` cases (benchmarks/bench_images.py) and selecting a
group of cases by its name."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from benchmarks import bench_images
from metaopt.cli import main
from metaopt.tools.bench import Case, command, count_flops, run_bench

CASES = ("images-conv4-5w1s/28px", "images-conv4-5w1s/84px")


def test_listing_the_cases_makes_no_images() -> None:
    bench_images.meta_batch.cache_clear()
    assert [case.name for case in bench_images.cases(quick=False)] == list(CASES)
    assert bench_images.meta_batch.cache_info().currsize == 0


def test_group_name_selects_both_sizes(tmp_path: Path, capsys) -> None:
    path = tmp_path / "bench.json"
    argv = ["bench", "--quick", "--threads", "1", "--repeats", "1", "--no-memory", "--no-compiled"]
    assert main([*argv, "--cases", "images-conv4-5w1s", "--json", str(path)]) == 0
    assert "images-conv4-5w1s/84px" in capsys.readouterr().out
    records = [r for r in json.loads(path.read_text()) if r["case"] != "matmul-peak"]
    assert {r["case"] for r in records} == set(CASES)
    for row in records:
        assert row["max_rel_grad_diff"] <= 5e-3
        assert row["flops"] > 0 and row["peak_fraction"] > 0
        assert "speedup_vs_torchopt-loop" in row


def test_unknown_group_is_refused(capsys) -> None:
    assert main(["bench", "--quick", "--cases", "images-conv4"]) == 2
    assert "--cases: unknown case(s) images-conv4" in capsys.readouterr().err


@pytest.mark.parametrize("name", CASES)
def test_every_implementation_counts_the_same_flops(name: str) -> None:
    (case,) = [c for c in bench_images.cases(quick=True) if c.name == name]
    counts = {impl: count_flops(fn) for impl, fn in case.without_compiled().impls.items()}
    assert len(set(counts.values())) == 1, counts


def test_channels_last_loop_computes_the_same_meta_gradient() -> None:
    size = bench_images.SIZES[0]
    default = bench_images.torchopt_row(size, True)()
    channels_last = bench_images.torchopt_row(size, True, channels_last=True)()
    for a, b in zip(channels_last, default, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.slow
def test_compiled_rows_agree(tmp_path: Path) -> None:
    path = tmp_path / "bench.json"
    argv = ["bench", "--quick", "--threads", "1", "--repeats", "1", "--no-memory"]
    assert main([*argv, "--cases", "images-conv4-5w1s", "--json", str(path)]) == 0
    rows = [r for r in json.loads(path.read_text()) if r.get("impl") == "metaopt-compiled"]
    assert len(rows) == 2
    assert all(r["max_rel_grad_diff"] <= 5e-3 and r["compile_s"] > 0 for r in rows)


def test_cases_on_request_run_only_when_named(monkeypatch) -> None:
    def case(name: str, on_request: bool) -> Case:
        return Case(name, {"a": lambda: [torch.ones(1)]}, reference="a", on_request=on_request)

    registered = [case("cheap", False), case("slow/one", True), case("slow/two", True)]
    monkeypatch.setattr(command, "domain_cases", lambda quick: registered)

    def run(cases: list[str] | None) -> set[str]:
        records = run_bench(quick=True, repeats=1, cases=cases, memory=False, echo=lambda _: None)
        return {r["case"] for r in records}

    assert run(None) == {"cheap"}
    assert run(["slow"]) == {"slow/one", "slow/two"}
    assert run(["slow/two", "cheap"]) == {"slow/two", "cheap"}
    assert all(case.on_request for case in bench_images.cases(quick=True))
