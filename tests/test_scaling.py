"""`metaopt scale`: a tiny run at 1 and 2 processes, the summary by hand, and its refusals."""

from __future__ import annotations

import json
import math
import statistics
import sys
from pathlib import Path

import pytest
import torch

from metaopt.cli import _load_families, build_parser, main
from metaopt.tools.scale import (
    ParameterMismatch,
    RunRecord,
    ScaleFailure,
    check_same_parameters,
    first_divergence,
    largest_metric_difference,
    launch_command,
    median_iteration_seconds,
    metric_differences,
    summarize_runs,
    train_flags,
)
from metaopt.tools.scale import run as scale_run

TINY = [
    "--iterations",
    "3",
    "--meta-batch",
    "4",
    "--eval-tasks",
    "4",
    "--eval-every",
    "0",
    "--test-tasks",
    "4",
]


def test_tiny_mdp_at_one_and_two_processes(tmp_path: Path, capsys) -> None:
    path = tmp_path / "scale.json"
    argv = ["scale", "mdp", *TINY, "--processes", "1,2", "--repeats", "1", "--json", str(path)]
    assert main([*argv, "--keep", str(tmp_path / "runs")]) == 0
    captured = capsys.readouterr()
    assert "ms/iteration" in captured.out
    assert (
        "across process counts after 3 iteration(s): " in captured.out
        and "DIFFER" not in captured.out
    )
    assert "1 thread(s) per process" in captured.out
    assert "2 processes, repeat 1/1" in captured.err  # one progress line per run
    document = json.loads(path.read_text())
    assert [row["processes"] for row in document["summary"]] == [1, 2]
    assert document["threads"] == 1 and document["config"]["meta_batch"] == 4
    assert document["params_agree"] and document["max_rel_param_diff"] <= 1e-5
    # 3 iterations <= --check-iterations 5: the timed runs themselves were compared across counts.
    assert document["agreement"]["check_iterations"] == 3
    assert document["agreement"]["across_repeats"] == 0.0
    assert sorted(r["processes"] for r in document["records"]) == [1, 2]
    for record in document["records"]:
        assert record["iterations"] == 3
        assert 0 < record["iteration_seconds"] <= record["train_seconds"] < record["wall_seconds"]
        assert (Path(record["run_dir"]) / "checkpoint.pt").exists()  # --keep kept it
    assert document["summary"][0]["speedup_wall_seconds"] == 1.0


# A stand-in for `metaopt train`: logs `query` = w each iteration and saves w as the final
# parameter. With more than one process, w grows by DRIFT from iteration PART on, as an RL run
# whose sampled actions part after a while.
FAKE_TRAIN = """
import json, sys
from pathlib import Path
import torch
from metaopt.training.checkpoint import save_checkpoint

processes, iterations, part = (int(a) for a in sys.argv[1:4])
out = Path(sys.argv[4])
out.mkdir(parents=True)
w, rows = 1.0, []
for i in range(1, iterations + 1):
    if processes > 1 and i >= part:
        w += 0.1
    rows.append(json.dumps({"iteration": i, "seconds": 0.01 * i / processes, "query": w}))
(out / "metrics.jsonl").write_text("\\n".join(rows) + "\\n")
save_checkpoint(out / "checkpoint.pt", {"algorithm": {"model": {"w": torch.tensor([w])}}})
"""


def _fake_runs(monkeypatch, tmp_path: Path, part: int) -> list[int]:
    """Launch FAKE_TRAIN instead of training; return the iterations of every launched run."""
    script = tmp_path / "fake_train.py"
    script.write_text(FAKE_TRAIN)
    launched = []

    def launch(family, flags, processes, out):
        iterations = int(flags[flags.index("--iterations") + 1])
        launched.append(iterations)
        return [sys.executable, str(script), str(processes), str(iterations), str(part), str(out)]

    monkeypatch.setattr(scale_run, "launch_command", launch)
    return launched


def test_long_runs_that_part_are_reported_and_short_ones_checked(
    monkeypatch, tmp_path: Path, capsys
) -> None:
    launched = _fake_runs(monkeypatch, tmp_path, part=4)
    path = tmp_path / "scale.json"
    argv = ["scale", "mdp", "--iterations", "10", "--check-iterations", "2", "--repeats", "1"]
    assert main([*argv, "--json", str(path)]) == 0
    assert launched == [2, 2, 10, 10]  # the agreement runs first
    out = capsys.readouterr().out
    assert "across process counts after 2 iteration(s): 0 (agree)" in out
    assert "not checked: the logged numbers first differ by more than 1e-05 at iteration 4" in out
    agreement = json.loads(path.read_text())["agreement"]
    assert agreement["first_divergence"] == 4
    assert agreement["timed_across_counts"] == pytest.approx(0.7 / 1.0, rel=1e-6)


def test_the_whole_runs_logged_numbers_are_compared_in_the_report_and_json(
    monkeypatch, tmp_path: Path, capsys
) -> None:
    """Issue 27, item 13: over the whole run, the largest difference of the logged numbers and
    the iteration it first exceeds the tolerance. By hand: at 2 processes query = 1 + 0.1·(i − 3)
    from iteration 4, at 1 process 1, so the largest is at iteration 10, 0.7 / 1.7."""
    _fake_runs(monkeypatch, tmp_path, part=4)
    path = tmp_path / "scale.json"
    argv = ["scale", "mdp", "--iterations", "10", "--check-iterations", "2", "--repeats", "1"]
    assert main([*argv, "--json", str(path)]) == 0
    out = capsys.readouterr().out
    assert (
        "logged numbers (metrics.jsonl) across process counts over all 10 iterations, largest "
        "relative difference: 0.41 (query at iteration 10; first above 1e-05 at iteration 4)"
    ) in out
    agreement = json.loads(path.read_text())["agreement"]
    assert agreement["largest_metric_difference"] == pytest.approx(0.7 / 1.7, rel=1e-12)
    assert (agreement["largest_metric"], agreement["largest_metric_iteration"]) == ("query", 10)


def test_metric_differences_relative_to_the_larger_magnitude() -> None:
    rows = [{"iteration": 1, "seconds": 1.0, "a": 2.0, "b": 0.0, "c": None}]
    rows.append({"iteration": 2, "seconds": 2.0, "a": 1.0, "b": -4.0, "c": 3.0})
    others = [{"iteration": 1, "seconds": 9.0, "a": 1.0, "b": 0.0, "c": None}]
    others.append({"iteration": 2, "seconds": 9.0, "a": 1.0, "b": 1.0, "c": None})
    assert list(metric_differences(rows, others)) == [
        (1, "a", 0.5),
        (1, "b", 0.0),
        (1, "c", 0.0),
        (2, "a", 0.0),
        (2, "b", 5 / 4),
        (2, "c", math.inf),
    ]
    assert largest_metric_difference(rows, others) == (math.inf, "c", 2)
    assert largest_metric_difference(rows[:1], others[:1]) == (0.5, "a", 1)
    assert largest_metric_difference([], []) is None
    assert first_divergence(rows[:1], others[:1], tolerance=0.6) is None
    assert first_divergence(rows[:1], others[:1], tolerance=0.4) == 1
    assert list(metric_differences(rows, others[:1]))[-1] == (2, "(row)", math.inf)
    nan = [{"iteration": 1, "a": math.nan, "b": 5.0}]
    value, key, iteration = largest_metric_difference(nan, [{"iteration": 1, "a": 1.0, "b": 0.0}])
    assert math.isnan(value) and (key, iteration) == ("a", 1)


def test_agreement_runs_that_differ_stop_before_timing(monkeypatch, tmp_path: Path, capsys) -> None:
    launched = _fake_runs(monkeypatch, tmp_path, part=1)
    argv = ["scale", "mdp", "--iterations", "10", "--check-iterations", "2"]
    assert main(argv) == 1
    assert launched == [2, 2]
    err = capsys.readouterr().err
    assert "metaopt: error: the final meta-parameters of 2 processes, 2 iteration(s) differ" in err
    assert "a sharded run must compute what one process computes" in err


def test_short_timed_runs_that_differ_fail_after_the_report(
    monkeypatch, tmp_path: Path, capsys
) -> None:
    launched = _fake_runs(monkeypatch, tmp_path, part=2)
    path = tmp_path / "scale.json"
    assert main(["scale", "mdp", "--iterations", "3", "--repeats", "1", "--json", str(path)]) == 1
    assert launched == [3, 3]  # no separate agreement runs: 3 iterations <= 5
    captured = capsys.readouterr()
    assert "across process counts after 3 iteration(s): 0.2 (DIFFER)" in captured.out
    assert "differ from 1 process, repeat 1's: w by 0.2" in captured.err
    document = json.loads(path.read_text())
    assert not document["params_agree"] and document["max_rel_param_diff"] == pytest.approx(0.2)


def _record(processes: int, repeat: int, iteration: float, train: float, wall: float) -> RunRecord:
    return RunRecord(processes, repeat, iteration, train, wall, iterations=10, run_dir="")


def test_summary_is_medians_over_repeats_and_their_ratios() -> None:
    records = [
        _record(1, 0, 0.020, 10.0, 15.0),
        _record(2, 0, 0.010, 6.0, 12.0),
        _record(2, 1, 0.016, 8.0, 9.0),
        _record(1, 1, 0.030, 12.0, 16.0),
        _record(1, 2, 0.024, 11.0, 20.0),
        _record(2, 2, 0.012, 7.0, 10.0),
    ]
    one, two = summarize_runs(records)
    # By hand: medians of (20, 30, 24) ms, (10, 12, 11) s, (15, 16, 20) s at 1 process,
    # and of (10, 16, 12) ms, (6, 8, 7) s, (12, 9, 10) s at 2.
    assert (one["processes"], one["runs"], two["processes"], two["runs"]) == (1, 3, 2, 3)
    assert one["iteration_seconds"] == 0.024 and two["iteration_seconds"] == 0.012
    assert one["train_seconds"] == 11.0 and two["train_seconds"] == 7.0
    assert one["wall_seconds"] == 16.0 and two["wall_seconds"] == 10.0
    assert two["speedup_iteration_seconds"] == pytest.approx(2.0)
    assert two["speedup_train_seconds"] == pytest.approx(11 / 7)
    assert two["speedup_wall_seconds"] == pytest.approx(1.6)
    assert one["speedup_iteration_seconds"] == one["speedup_wall_seconds"] == 1.0


def test_per_iteration_time_is_the_median_step_of_the_cumulative_seconds() -> None:
    cumulative = [0.5, 0.6, 0.8, 0.9, 1.9]  # steps 0.5, 0.1, 0.2, 0.1, 1.0
    assert median_iteration_seconds(cumulative) == pytest.approx(
        statistics.median([0.5, 0.1, 0.2, 0.1, 1.0])
    )
    assert median_iteration_seconds([0.25]) == 0.25


def test_parameters_that_differ_fail_the_check() -> None:
    def tensors(w: list[float], b: float) -> dict[str, torch.Tensor]:
        return {
            "w": torch.tensor(w, dtype=torch.float64),
            "b": torch.tensor([b], dtype=torch.float64),
        }

    reference = tensors([3.0, 4.0], 1.0)
    close = tensors([3.0, 4.0 + 1e-6], 1.0)  # ‖Δw‖ / ‖w‖ = 1e-6 / 5
    far = tensors([3.0, 4.0], 1.001)  # ‖Δb‖ / ‖b‖ = 1e-3
    assert check_same_parameters({"one": reference, "two": close}) == pytest.approx(
        1e-6 / 5, rel=1e-9
    )
    with pytest.raises(ParameterMismatch, match=r"far differ from one's: b by 0\.001"):
        check_same_parameters({"one": reference, "two": close, "far": far})
    with pytest.raises(ParameterMismatch, match="different parameters: extra"):
        check_same_parameters({"one": reference, "two": {**reference, "extra": torch.ones(1)}})
    nan = tensors([3.0, float("nan")], 1.0)
    with pytest.raises(ParameterMismatch, match="w by nan"):
        check_same_parameters({"one": reference, "two": nan})


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--processes", "0"], "--processes must be comma-separated integers >= 1, got '0'"),
        (["--processes", "1,two"], "--processes must be comma-separated integers >= 1"),
        (["--repeats", "0"], "--repeats must be an integer >= 1, got 0"),
        (["--threads", "0"], "--threads must be an integer >= 1, got 0"),
        (["--out", "runs/x"], "--out is set by metaopt scale itself"),
        (["--meta-batch", "2", "--processes", "1,3"], "--processes 3 is more than --meta-batch 2"),
        (["--inner-lr", "-1"], "--inner-lr"),
    ],
)
def test_bad_flags_exit_2_before_anything_runs(monkeypatch, capsys, flags, message) -> None:
    def launched(*args, **kwargs):
        raise AssertionError("a run was launched")

    monkeypatch.setattr(scale_run.subprocess, "run", launched)
    assert main(["scale", "mdp", *flags]) == 2
    err = capsys.readouterr().err
    assert err.startswith("metaopt: error: ") and message in err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("argv", [["scale", "nope"], ["scale", "mdp", "--quiet"]])
def test_unknown_family_or_flag_is_a_usage_error(capsys, argv) -> None:
    with pytest.raises(SystemExit) as stop:
        main(argv)
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert ("nope" in err or "--quiet" in err) and "Traceback" not in err


def test_a_failing_run_shows_its_stderr_and_exits_1(monkeypatch, capsys) -> None:
    def failing(family, flags, processes, out):
        return [sys.executable, "-c", "import sys; sys.stderr.write('boom: bad rank'); sys.exit(3)"]

    monkeypatch.setattr(scale_run, "launch_command", failing)
    assert main(["scale", "mdp", *TINY, "--repeats", "1"]) == 1
    err = capsys.readouterr().err
    assert "1 process, repeat 1 failed with exit status 3" in err and "boom: bad rank" in err


def test_failure_is_a_scale_failure() -> None:
    with pytest.raises(ScaleFailure, match="exit status 3"):
        scale_run._run_once([sys.executable, "-c", "raise SystemExit(3)"], {}, "a run")


def test_flags_given_to_train_parse_back_to_the_same_overrides() -> None:
    overrides = {
        "meta_batch": 400,
        "inner_lr": 0.25,
        "shared_torso": False,
        "anneal": True,
        "hidden_sizes": (),
        "preset": "tuned",
    }
    flags = train_flags(_load_families()[0]["mdp"].config_class, overrides)
    assert "--no-shared-torso" in flags and "--anneal" in flags
    parsed = vars(build_parser(_load_families()[0]).parse_args(["train", "mdp", *flags]))
    assert {k: parsed[k] for k in overrides} == overrides


def test_launch_commands() -> None:
    out = Path("/tmp/run")
    one = launch_command("mdp", ["--iterations", "3"], 1, out)
    assert one[1:] == [
        "-m",
        "metaopt",
        "train",
        "mdp",
        "--iterations",
        "3",
        "--out",
        str(out),
        "--quiet",
    ]
    two = launch_command("mdp", [], 2, out)
    assert two[1:7] == [
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        "-m",
    ]
    assert two[0] == one[0] == sys.executable
