"""`metaopt bench`: a smoke test of the quick run, and the agreement check it relies on."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from metaopt.cli import main
from metaopt.tools.bench import Case, peak_memory_bytes, run_bench, time_case


def test_quick_bench_writes_records_and_every_impl_agrees(tmp_path: Path, capsys) -> None:
    path = tmp_path / "bench.json"
    assert (
        main(
            [
                "bench",
                "--quick",
                "--threads",
                "1",
                "--repeats",
                "1",
                "--json",
                str(path),
                "--plot",
                str(tmp_path / "m.png"),
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "sine-maml-1step" in out and "peak memory" in out
    records = json.loads(path.read_text())
    timed = [r for r in records if "median_s" in r]
    assert {"sine-maml-1step", "sine-maml-5step", "sine-metasgd-1step", "sine-reptile-5step"} <= {
        r["case"] for r in timed
    }
    for record in timed:
        assert {"case", "impl", "median_s", "threads", "max_rel_grad_diff"} <= set(record)
        assert record["threads"] == 1 and record["median_s"] > 0
        if record["max_rel_grad_diff"] is not None:
            assert record["max_rel_grad_diff"] <= 1e-4
    memory = {(r["case"], r["inner_steps"]): r["peak_bytes"] for r in records if "peak_bytes" in r}
    # Second-order MAML keeps every inner step's graph; first-order MAML does not.
    assert memory[("memory-sine-maml", 5)] > memory[("memory-sine-maml", 1)]
    assert memory[("memory-sine-maml", 5)] > memory[("memory-sine-fomaml", 5)]
    assert (tmp_path / "m.png").stat().st_size > 0


def test_disagreeing_implementation_stops_the_bench() -> None:
    right = lambda: [torch.ones(3)]  # noqa: E731
    wrong = lambda: [torch.ones(3) * 1.01]  # noqa: E731
    case = Case("toy", {"a": right, "b": wrong}, reference="a", tolerance=1e-6)
    with pytest.raises(AssertionError, match="toy: b's meta-gradient differs from a's by 0.01"):
        time_case(case, repeats=1, warmup=0)


def test_unknown_case_is_a_user_error(capsys) -> None:
    assert main(["bench", "--quick", "--cases", "nope", "--no-memory"]) == 2
    assert "--cases: unknown case(s) nope" in capsys.readouterr().err


def test_peak_memory_grows_with_what_is_kept_alive() -> None:
    def chain(n: int) -> None:
        x = torch.randn(10_000, requires_grad=True)
        y = x
        for _ in range(n):
            y = torch.tanh(y * 1.01)
        y.sum().backward()

    small, large = peak_memory_bytes(lambda: chain(2)), peak_memory_bytes(lambda: chain(20))
    assert large > 5 * small  # each step saves a 40 kB activation for the backward


def test_run_bench_selects_cases() -> None:
    records = run_bench(
        quick=True, repeats=1, cases=["sine-metasgd-1step"], memory=False, echo=lambda _: None
    )
    assert {r["case"] for r in records} == {"sine-metasgd-1step"}
