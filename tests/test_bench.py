"""`metaopt bench`: a smoke test of the quick run, and the agreement check it relies on."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import metaopt.compiled as compiled
from metaopt.cli import main
from metaopt.tools.bench import Case, peak_memory_bytes, round_robin, run_bench, time_case


def eager_backend() -> dict[str, object]:
    """The compiled engine's options with dynamo's ``eager`` backend: the trace without inductor's
    code generation (seconds instead of minutes per case)."""
    return {"backend": "eager", "dynamic": False, "fullgraph": True}


def test_quick_bench_writes_records_and_every_impl_agrees(
    tmp_path: Path, capsys, monkeypatch
) -> None:
    monkeypatch.setattr(compiled, "compile_options", eager_backend)
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
    sine = {"sine-maml-1step", "sine-maml-5step", "sine-metasgd-1step", "sine-reptile-5step"}
    rows = [r for r in timed if r["impl"] == "metaopt-compiled"]
    assert {r["case"] for r in rows} == sine
    for row in rows:
        # the eager backend generates no code, so there is no inductor cache to be cold or warm
        assert row["compile_s"] > 0 and row["compile_cache"] is None
    assert all("compile_s" not in r for r in timed if r["impl"] != "metaopt-compiled")
    assert "compile s" in out and "metaopt-compiled" in out
    for record in timed:
        assert {"case", "impl", "median_s", "threads", "max_rel_grad_diff"} <= set(record)
        assert record["threads"] == 1 and record["median_s"] > 0
        if record["max_rel_grad_diff"] is not None:
            assert record["max_rel_grad_diff"] <= 1e-4
    memory = {(r["case"], r["inner_steps"]): r["peak_bytes"] for r in records if "peak_bytes" in r}
    # Second-order MAML keeps every inner step's graph; first-order MAML does not.
    assert memory[("memory-sine-maml", 5)] > memory[("memory-sine-maml", 1)]
    assert memory[("memory-sine-maml", 5)] > memory[("memory-sine-fomaml", 5)]
    # iMAML keeps no inner graph either: its peak does not grow with the steps.
    assert memory[("memory-sine-imaml", 5)] <= 1.05 * memory[("memory-sine-imaml", 2)]
    assert memory[("memory-sine-imaml", 5)] < memory[("memory-sine-maml", 5)]
    # Checkpointed unrolling holds a few states instead of every step's graph.
    assert memory[("memory-sine-maml-checkpointed", 5)] < memory[("memory-sine-maml", 5)]
    assert "sine-maml-20step-checkpointed" in {r["case"] for r in timed}
    assert (tmp_path / "m.png").stat().st_size > 0


def test_disagreeing_implementation_stops_the_bench() -> None:
    right = lambda: [torch.ones(3)]  # noqa: E731
    wrong = lambda: [torch.ones(3) * 1.01]  # noqa: E731
    case = Case("toy", {"a": right, "b": wrong}, reference="a", tolerance=1e-6)
    with pytest.raises(AssertionError, match="toy: b's meta-gradient differs from a's by 0.01"):
        time_case(case, repeats=1, warmup=0)


def test_a_sample_is_a_block_of_calls_as_long_as_asked() -> None:
    import time

    def slow() -> list[torch.Tensor]:
        time.sleep(0.012)
        return [torch.ones(3)]

    case = Case("toy", {"fast": lambda: [torch.ones(3)], "slow": slow}, reference="fast")
    timed = time_case(case, repeats=2, warmup=3, min_sample_s=0.01)
    assert timed["slow"]["calls_per_sample"] == 1  # one call is longer than the block
    assert timed["fast"]["calls_per_sample"] > 1
    assert time_case(case, repeats=1, warmup=0)["fast"]["calls_per_sample"] == 1


def test_min_sample_ms_reaches_the_timing_and_refuses_a_negative(tmp_path: Path, capsys) -> None:
    path = tmp_path / "bench.json"
    flags = ["bench", "--quick", "--cases", "sine-maml-1step", "--no-memory", "--no-compiled"]
    assert main([*flags, "--repeats", "1", "--min-sample-ms", "0", "--json", str(path)]) == 0
    timed = [r for r in json.loads(path.read_text()) if "median_s" in r]
    assert timed and all(r["calls_per_sample"] == 1 for r in timed)
    assert "calls" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exited:  # argparse's own exit for a bad value
        main([*flags, "--min-sample-ms", "-1"])
    assert exited.value.code == 2
    assert "--min-sample-ms: expected a finite number >= 0, got '-1'" in capsys.readouterr().err


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


def test_run_bench_selects_cases_and_skips_the_compiled_rows() -> None:
    records = run_bench(
        quick=True,
        repeats=1,
        cases=["sine-metasgd-1step"],
        memory=False,
        compiled=False,
        echo=lambda _: None,
    )
    assert {r["case"] for r in records} == {"sine-metasgd-1step"}
    assert "metaopt-compiled" not in {r["impl"] for r in records}
    assert {"torch.func", "metaopt-vmap"} <= {r["impl"] for r in records}


def test_round_robin_refills_before_it_times() -> None:
    calls: list[str] = []
    samples = round_robin(
        {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, 2, 3, untimed=1
    )
    assert calls == (["a"] * 4 + ["b"] * 4) * 2  # one untimed call, then three timed ones
    assert [len(s) for s in samples.values()] == [2, 2]


def docs_script(name: str, *flags: str) -> str:
    """What ``python benchmarks/NAME FLAGS`` prints (it must exit 0)."""
    script = Path(__file__).parents[1] / "benchmarks" / name
    return subprocess.run(
        [sys.executable, str(script), *flags],
        check=True,
        capture_output=True,
        text=True,
        timeout=600,
    ).stdout


def test_the_checkpointed_unroll_script_of_the_docs_runs() -> None:
    """benchmarks/checkpoint_unroll.py, the experiment behind docs/performance.md's checkpointing table:
    the checkpointed unroll's meta-gradient is the plain unroll's."""
    printed = docs_script(
        "checkpoint_unroll.py", "--dtype", "float64", "--steps", "2", "--segment", "1"
    )
    difference = float(printed.split("relative difference ")[1].split()[0])
    assert difference <= 1e-12
    assert "plain unroll: peak" in printed and "segments of 1: peak" in printed


def test_the_unroll_memory_script_of_the_docs_runs() -> None:
    """benchmarks/unroll_memory.py, behind docs/performance.md's checkpointed-unrolling table: the
    shipped option's meta-gradient is the plain unroll's, and it holds less at 6 steps."""
    script = Path(__file__).parents[1] / "benchmarks" / "unroll_memory.py"
    flags = ["--steps", "6", "--checkpoints", "2", "--repeats", "1", "--tasks", "4"]
    printed = subprocess.run(
        [sys.executable, str(script), *flags, "--dtype", "float64"],
        check=True,
        capture_output=True,
        text=True,
        timeout=300,
    ).stdout
    row = printed.splitlines()[2].split()
    assert row[0] == "6" and float(row[2]) < float(row[1])  # checkpointed peak below the plain
    assert int(row[6]) == 9  # schedule_cost(6, 2) steps without a graph
    assert float(row[7]) <= 1e-12


@pytest.mark.slow
@pytest.mark.parametrize(
    ("script", "rows"),
    [
        # docs/performance.md's Reptile table: every direction checked against the deep-copy loop
        (
            "compiled_reptile.py",
            ("compiled+metrics", "compiled-skip-guards", "torch.func-compiled"),
        ),
        # its MAML-RL rows: the meta-gradients around eager sampling against the vectorised engine
        (
            "compiled_rl.py",
            ("compiled-around-sampling", "compiled-simulation-too", "sampling-only"),
        ),
    ],
)
def test_the_compiled_engine_scripts_of_the_docs_run(script: str, rows: tuple[str, ...]) -> None:
    """benchmarks/compiled_reptile.py and benchmarks/compiled_rl.py with the eager backend (dynamo's trace
    without code generation); each checks its meta-gradients before it times anything."""
    path = Path(__file__).parents[1] / "benchmarks" / script
    printed = subprocess.run(
        [sys.executable, str(path), "--rounds", "1", "--backend", "eager"],
        check=True,
        capture_output=True,
        text=True,
        timeout=600,
    ).stdout
    for name in rows:
        assert name in printed


@pytest.mark.slow
def test_the_cpp_wrapper_script_of_the_docs_runs() -> None:
    """benchmarks/compiled_wrapper.py, behind docs/performance.md's C++-wrapper table: both wrappers
    through inductor, their meta-gradients checked against torch.func before anything is timed,
    and its --neighbours mode."""
    printed = docs_script(
        "compiled_wrapper.py", "--rounds", "1", "--calls", "1", "--cases", "sine-maml-1step"
    )
    for name in ("compiled, Python wrapper", "compiled, C++ wrapper", "torch.func", "loop"):
        assert f"  {name} " in printed
    printed = docs_script("compiled_wrapper.py", "--neighbours", "--rounds", "1")
    assert "after higher" in printed and "time_case, 5 call(s) per sample" in printed


@pytest.mark.slow
def test_the_overhead_script_of_the_docs_runs() -> None:
    """benchmarks/compiled_overhead.py, behind docs/performance.md's table of where a compiled 1-step
    meta-iteration's time goes: every depth timed, the generated code's entry found by cProfile."""
    printed = docs_script(
        "compiled_overhead.py", "--rounds", "1", "--calls", "1", "--profiled", "3"
    )
    for case in ("maml", "metasgd"):
        for depth in ("meta_backward", "engine call", "engine call, every guard", "torch.func"):
            assert f"{case} {depth}" in printed
        entry = printed.split(f"{case} C++ entry")[1].split()[0]
        assert float(entry) > 0  # the profiler saw the generated code


@pytest.mark.slow
def test_the_matmul_orientation_script_of_the_docs_runs() -> None:
    """benchmarks/matmul_orientation.py, behind docs/performance.md's table of the orientation pass:
    both orientations of the sine products timed, the engine compiled without and with the pass
    (each meta-gradient checked against torch.func before timing), the products it timed."""
    printed = docs_script(
        "matmul_orientation.py", "--rounds", "1", "--calls", "1", "--cases", "sine-maml-1step"
    )
    assert printed.count("direct") == 16  # four shapes, four layouts of the operands
    timed, swapped = printed.split("products timed: ")[1].split(", swapped: ")
    assert int(timed) > 0 and 0 <= int(swapped.split()[0]) <= int(timed)  # swaps: machine-dependent
    for name in ("compiled, without the pass", "compiled, with the pass", "torch.func", "loop"):
        assert f"  {name} " in printed
