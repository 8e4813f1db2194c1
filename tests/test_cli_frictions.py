"""Issue 27's small frictions of the command line: refusals in one line, directories that are not
runs left untouched, warnings in one format, one bound per flag."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import reliability_helpers  # registers the rtoy family
from core_helpers import refused

from metaopt.cli import main


@pytest.mark.parametrize(
    ("argv", "message", "command"),
    [
        (
            ["train", "rtoy", "--iterations", "abc"],
            "argument --iterations: expected an integer, got 'abc'",
            "metaopt train rtoy",
        ),
        (
            ["train", "rtoy", "--outer-lr", "fast"],
            "argument --outer-lr: expected a number, got 'fast'",
            "metaopt train rtoy",
        ),
        (["train", "rtoy", "--hidden"], "unrecognized arguments: --hidden", "metaopt train rtoy"),
        (["train"], "the following arguments are required: FAMILY", "metaopt train"),
        (["eval"], "the following arguments are required: RUN_DIR", "metaopt eval"),
        (
            ["eval", "x", "--tasks", "0"],
            "argument --tasks: expected an integer >= 1, got '0'",
            "metaopt eval",
        ),
        (
            ["bench", "--threads", "x"],
            "argument --threads: expected an integer >= 1, got 'x'",
            "metaopt bench",
        ),
        (
            ["compare", "rtoy", "--repeats", "x"],
            "argument --repeats: expected an integer, got 'x'",
            "metaopt compare rtoy",
        ),
        (
            ["scale", "rtoy", "--processes"],
            "argument --processes: expected one argument",
            "metaopt scale rtoy",
        ),
        (["families", "extra"], "unrecognized arguments: extra", "metaopt families"),
        (["nonsense"], "argument COMMAND: invalid choice: 'nonsense'", "metaopt"),
        ([], "the following arguments are required: COMMAND", "metaopt"),
    ],
)
def test_argparse_errors_are_one_line_with_a_pointer_to_help(
    argv: list[str], message: str, command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    err = refused(argv, capsys)
    assert message in err and "usage:" not in err
    assert err.endswith(f"(see {command} --help)")


@pytest.mark.parametrize("value", ["-5", "0"])
def test_scale_gives_iterations_the_bound_of_training(value: str, capsys) -> None:
    err = refused(["scale", "sine", "--iterations", value, "--repeats", "1"], capsys)
    assert f"--iterations must be an integer >= 1 to train, got {value}" in err


@pytest.mark.parametrize("value", ["-5", "0"])
def test_iterations_has_one_bound_for_training(
    value: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    argv = ["train", "rtoy", "--iterations", value, "--out", str(out), "--quiet"]
    err = refused(argv, capsys)
    assert f"--iterations must be an integer >= 1 to train, got {value}" in err
    assert not out.exists()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["train", "sine", "--grid", "-5"],
            "--grid must be an integer >= 2 (or 0: uniform x), got -5",
        ),
        (
            ["train", "sine", "--grid", "1"],
            "--grid must be an integer >= 2 (or 0: uniform x), got 1",
        ),
    ],
)
def test_grid_has_one_bound(argv: list[str], message: str, capsys) -> None:
    assert message in refused(argv, capsys)


def _listing(directory: Path) -> dict[str, tuple[int, int]]:
    """Every entry under ``directory`` (itself included) with its size and mtime in ns."""
    entries = [directory, *directory.rglob("*")]
    return {
        str(p.relative_to(directory)): (p.stat().st_size, p.stat().st_mtime_ns) for p in entries
    }


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["train", "rtoy", "--out", "{dir}", "--quiet"],
            "--out '{dir}' is not empty and is not a metaopt run directory; choose a new or empty",
        ),
        (["eval", "{dir}"], "RUN_DIR '{dir}' has no config.json; is it a metaopt run directory?"),
        (
            ["train", "rtoy", "--resume", "{dir}", "--quiet"],
            "--resume '{dir}' has no config.json; is it a metaopt run directory?",
        ),
    ],
)
def test_a_directory_that_is_not_a_run_is_left_untouched(
    argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("my notes\n")
    (mine / "sub").mkdir()
    before = _listing(mine)
    err = refused([a.format(dir=mine) for a in argv], capsys)
    assert message.format(dir=mine) in err and "--resume" not in err.replace("--resume '", "")
    assert _listing(mine) == before  # no .lock left, nothing changed


def test_out_at_a_run_directory_suggests_resume(tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    assert main(["train", "rtoy", "--iterations", "1", "--out", str(out), "--quiet"]) == 0
    capsys.readouterr()
    err = refused(["train", "rtoy", "--out", str(out), "--quiet"], capsys)
    assert f"continue the run there with --resume {out}" in err


@pytest.mark.parametrize("command", ["eval", "resume"])
def test_a_missing_run_directory_is_said_not_to_exist(
    command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nope"
    argv = (
        ["eval", str(missing)] if command == "eval" else ["train", "rtoy", "--resume", str(missing)]
    )
    label = "RUN_DIR" if command == "eval" else "--resume"
    assert f"{label} '{missing}' does not exist" in refused(argv, capsys)
    assert not missing.exists()


@pytest.mark.parametrize("command", ["train", "eval", "compare", "bench", "scale"])
def test_every_command_shows_a_warning_as_one_line(
    command: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    """Warnings go through the one place in cli.py: one ``metaopt: warning:`` line, no path or
    source line, whichever subcommand raised them."""
    from metaopt.algorithms import NegativeRateWarning

    def warn(*args: object, **kwargs: object) -> int:
        warnings.warn("rates turned negative", NegativeRateWarning, stacklevel=1)
        warnings.warn("something of torch's", FutureWarning, stacklevel=1)
        return 0

    import metaopt.tools.bench as bench
    import metaopt.tools.compare as compare
    import metaopt.tools.scale as scale
    import metaopt.training as training

    argv = {
        "train": ["train", "rtoy", "--out", str(tmp_path / "r"), "--quiet"],
        "eval": ["eval", str(tmp_path)],
        "compare": ["compare", "rtoy"],
        "bench": ["bench"],
        "scale": ["scale", "rtoy"],
    }[command]
    monkeypatch.setattr(training, "train", warn)
    monkeypatch.setattr(training, "evaluate_run", warn)
    monkeypatch.setattr(training, "evaluation_summary", lambda evaluation: "")
    monkeypatch.setattr(compare, "run_compare_command", warn)
    monkeypatch.setattr(bench, "run_bench", warn)
    monkeypatch.setattr(scale, "run_scale_command", warn)
    if command == "train":  # the summary reads the run's eval.json
        (tmp_path / "r").mkdir()
        (tmp_path / "r" / "eval.json").write_text("{}")
        monkeypatch.setattr(training, "train", lambda *a, **k: warn() or tmp_path / "r")
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        assert main(argv) == 0
    err = capsys.readouterr().err.splitlines()
    assert err == [
        "metaopt: warning: rates turned negative",
        "metaopt: warning: something of torch's (FutureWarning)",
    ]


def test_torch_load_reads_a_checkpoint_and_metaopt_load_checkpoint_checks_it(
    tmp_path: Path,
) -> None:
    """Issue 27: ``torch.load(checkpoint.pt, weights_only=True)`` reads a run's checkpoint as it
    is; ``metaopt.load_checkpoint`` returns the same, after its checks."""
    import torch

    import metaopt
    from metaopt.training.checkpoint import CheckpointError, load_checkpoint

    out = tmp_path / "run"
    assert main(["train", "rtoy", "--iterations", "2", "--out", str(out), "--quiet"]) == 0
    path = out / "checkpoint.pt"
    plain = torch.load(path, weights_only=True)
    checked = metaopt.load_checkpoint(path)
    assert metaopt.load_checkpoint is load_checkpoint
    assert plain["iteration"] == checked["iteration"] == 2
    reliability_helpers.assert_bitwise_equal(plain, checked)
    data = path.read_bytes()
    for cut in (1, 2, 30, 200, len(data) // 2):  # the header is at the end: any cut shows
        path.write_bytes(data[:-cut])
        with pytest.raises(CheckpointError, match="is truncated"):
            load_checkpoint(path)


def test_checkpoints_with_the_header_first_still_load() -> None:
    """tests/fixtures/sine-v0.1.0 was written with the header as the file's first line."""
    from metaopt.training.checkpoint import load_checkpoint

    path = Path(__file__).parent / "fixtures" / "sine-v0.1.0" / "checkpoint.pt"
    assert path.read_bytes().startswith(b"METAOPT-CHECKPOINT ")
    assert load_checkpoint(path)["iteration"] == 3


def test_eval_with_other_tasks_or_steps_keeps_the_runs_evaluation(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 27: ``metaopt eval RUN_DIR --tasks N`` writes eval-<N>-<steps>.json and its plots
    beside the run's, which stay as they were; without the flags eval.json is rewritten."""
    import json

    from metaopt.training.registry import register_family

    class Plotted(reliability_helpers.RToyFamily):
        name = "rtoy-plotted"

        def plot(self, algo, config, run_dir, results):  # type: ignore[no-untyped-def]
            path = results.path(run_dir, "mse_vs_steps.png")
            path.write_text(json.dumps(results.evaluation))
            return [path]

    register_family(Plotted)
    out = tmp_path / "run"
    assert main(["train", "rtoy-plotted", "--iterations", "2", "--out", str(out), "--quiet"]) == 0
    own = {name: (out / name).read_bytes() for name in ("eval.json", "mse_vs_steps.png")}
    curve = (out / "training_curve.png").stat().st_mtime_ns
    assert json.loads(own["eval.json"])["tasks"] == 5
    capsys.readouterr()

    assert main(["eval", str(out), "--tasks", "3", "--steps", "0,2"]) == 0
    assert f"evaluation: {out / 'eval-3-0,2.json'}" in capsys.readouterr().out
    further = json.loads((out / "eval-3-0,2.json").read_text())
    assert further["tasks"] == 3 and list(further["by_steps"]) == ["0", "2"]
    assert json.loads((out / "mse_vs_steps-3-0,2.png").read_text()) == further
    assert {name: (out / name).read_bytes() for name in own} == own  # the run's, untouched
    assert (out / "training_curve.png").stat().st_mtime_ns == curve

    assert main(["eval", str(out), "--tasks", "4"]) == 0  # the family's steps: 0 and 1
    assert (out / "eval-4-0,1.json").is_file() and (out / "eval-3-0,2.json").is_file()
    assert main(["eval", str(out)]) == 0  # the run's own evaluation again, same numbers
    assert (out / "eval.json").read_bytes() == own["eval.json"]
    assert f"evaluation: {out / 'eval.json'}" in capsys.readouterr().out


def test_the_sine_protocol_block_follows_steps() -> None:
    """``--steps`` gives the 10-point protocol exactly those steps (not also --protocol-steps)."""
    import torch

    from metaopt.training.build import build_algorithm
    from metaopt.training.config import resolve_config
    from metaopt.training.family import EvalRequest
    from metaopt.training.registry import get_family

    family = get_family("sine")
    values = {**reliability_helpers.CHEAP["sine"], "protocol_steps": 3, "iterations": 1}
    config = resolve_config(family, values)
    torch.manual_seed(0)
    algo = build_algorithm(config, family.make_model(config))
    baseline = family.make_model(config)
    asked = family.extra_evaluation(algo, baseline, config, EvalRequest(2, [0, 1, 5]))
    assert list(asked["protocol_10pt"]["by_steps"]) == ["0", "1", "5"]
    default = family.extra_evaluation(algo, baseline, config, EvalRequest(2, None))
    assert list(default["protocol_10pt"]["by_steps"]) == ["0", "1", "3"]
