"""An algorithm from outside metaopt, installed as a plug-in: MAML++'s LSLR, the module that
docs/extending.md shows ("Your own algorithm"), written into a temporary directory with a
``*.dist-info`` that declares it under the ``metaopt.algorithms`` entry points (importlib.metadata
finds it on ``PYTHONPATH``, as pip would have installed it). The command line then trains,
resumes, evaluates and compares it by name, and Python checks its meta-gradient by name."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from reliability_helpers import assert_same_run, metrics
from torch import nn

import metaopt
from metaopt.registry import build_learner
from metaopt.testing import LinearTaskBatch, check_meta_gradient, random_linear_tasks
from metaopt.training.checkpoint import load_checkpoint

DOCS = Path(__file__).resolve().parents[1] / "docs" / "extending.md"
MODULE = "metaopt_lslr"
#: sine, small: 2 inner steps (2 rates per layer), 3 tasks a meta-batch, a tiny network.
SINE = ["sine", "--algo", "lslr", "--inner-steps", "2", "--meta-batch", "3", "--hidden", "8"]
SINE += ["--eval-tasks", "4", "--baseline-steps", "0", "--protocol-steps", "1", "--quiet"]


def plugin_source() -> str:
    """The ```python block of docs/extending.md that is the plug-in's module."""
    blocks = re.findall(r"^```python\n(.*?)^```", DOCS.read_text(), re.MULTILINE | re.DOTALL)
    (source,) = [b for b in blocks if b.startswith(f"# {MODULE}.py")]
    return source


@pytest.fixture(scope="module")
def plugin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory that "installs" the plug-in when it is on ``sys.path``."""
    root = tmp_path_factory.mktemp("site")
    (root / f"{MODULE}.py").write_text(plugin_source())
    info = root / f"{MODULE}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: metaopt-lslr\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[metaopt.algorithms]\nlslr = {MODULE}:SPEC\n")
    return root


def _metaopt(plugin: Path, *argv: str, status: int = 0, processes: int = 1) -> str:
    """``python -m metaopt ARGV`` with the plug-in installed (under torchrun for ``processes`` >
    1); its stdout and stderr."""
    path = os.pathsep.join([str(plugin), *filter(None, [os.environ.get("PYTHONPATH")])])
    launch = [sys.executable]
    if processes > 1:
        launch += [
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node",
            str(processes),
        ]
    done = subprocess.run(
        [*launch, "-m", "metaopt", *argv],
        env={**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == status, done.stderr
    return done.stdout + done.stderr


def test_train_resume_and_eval_it_by_name(plugin: Path, tmp_path: Path) -> None:
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    _metaopt(plugin, "train", *SINE, "--iterations", "4", "--out", str(whole))
    _metaopt(plugin, "train", *SINE, "--iterations", "2", "--out", str(cut))
    _metaopt(plugin, "train", "sine", "--resume", str(cut), "--iterations", "4", "--quiet")
    assert_same_run(whole, cut)  # bit for bit, rates and Adam's moments of them included
    assert len(metrics(cut)) == 4
    saved = json.loads((whole / "config.json").read_text())["config"]
    assert saved["algo"] == "lslr"
    assert saved["algo_options"] == {"lslr": {"per_step": True, "first_order": False}}
    rates = load_checkpoint(whole / "checkpoint.pt")["algorithm"]["learned"]
    assert len(rates) == 6 and all(rate.shape == (2,) for rate in rates)  # 3 layers × 2
    assert all(bool((rate != 0.01).all()) for rate in rates)  # all learned, from --inner-lr
    evaluation = json.loads((whole / "eval.json").read_text())
    assert evaluation["adaptation"]["rule"] == "lslr (learned per-layer, per-step rates)"
    printed = _metaopt(plugin, "eval", str(whole), "--tasks", "3", "--steps", "0,2")
    assert (whole / "eval-3-0,2.json").is_file() and "after  2 steps" in printed


def test_compare_it_with_maml(plugin: Path, tmp_path: Path) -> None:
    report = tmp_path / "report"
    argv = ["compare", "sine", "--methods", "maml,lslr", "--inner-steps", "2", "--iterations"]
    argv += ["2", "--steps", "1,2", "--checkpoints", "1", "--repeats", "1", "--batches", "2"]
    argv += ["--heldout-tasks", "2", "--meta-batch", "3", "--hidden", "8", "--eval-tasks", "2"]
    argv += ["--baseline-steps", "0", "--no-per-step", "--report", str(report), "--quiet"]
    _metaopt(plugin, *argv)
    results = json.loads((report / "results.json").read_text())
    assert results["methods"] == ["maml", "lslr"]
    # Its rates start at --inner-lr, where its θ-gradient is MAML's: its row is its rates'.
    assert {row["method"] for row in results["gradients"]} == {"lslr-rates", "maml-other-batch"}
    assert results["config"]["algo_options"]["lslr"] == {"per_step": False, "first_order": False}
    text = (report / "report.md").read_text()
    assert "MAML++ LSLR's rates, first vs second order" in text and "| MAML++ LSLR |" in text
    for name in ("cosine_vs_steps.png", "curves_iterations.png"):
        assert (report / name).is_file()
    run = json.loads((report / "runs" / "lslr" / "config.json").read_text())["config"]
    assert run["algo"] == "lslr" and set(run["algo_options"]) == {"lslr"}  # its options alone


def test_its_options_are_flags_of_its_own(plugin: Path, tmp_path: Path) -> None:
    shown = _metaopt(plugin, "train", "sine", "--help")
    assert "MAML++ LSLR options (algo lslr):" in shown and "--per-step, --no-per-step" in shown
    assert "reptile, imaml, lslr" in shown
    refused = _metaopt(plugin, "train", "sine", "--no-per-step", "--out", str(tmp_path), status=2)
    assert "--per-step applies to --algo lslr only; got --algo maml" in refused


def test_its_meta_gradient_is_exact_by_name(plugin: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Registered in Python, by its spec (a rate per step) or as the bare rule (a rate per
    layer): the finite-difference check takes it by name, on the loop and vectorised engines."""
    monkeypatch.syspath_prepend(str(plugin))
    module = __import__(MODULE)
    tasks = random_linear_tasks(3, 4, np.random.default_rng(3))
    for registered in (module.SPEC, module.LSLR):
        metaopt.register_algorithm("lslr", registered)
        for engine, batch in (("loop", tasks), ("vmap", LinearTaskBatch(tasks))):
            torch.manual_seed(0)
            layers = (nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 1), nn.Flatten(0))
            model = nn.Sequential(*layers).double()
            settings = {"inner_lr": 0.1, "inner_steps": 3, "engine": engine}
            check_meta_gradient("lslr", batch, model=model, **settings)
            shapes = {
                tuple(t.shape) for t in build_learner("lslr", model, **settings).learned_tensors()
            }
            assert shapes == {(3,) if registered is module.SPEC else (1,)}


@pytest.mark.slow
def test_under_torchrun_it_follows_one_process(plugin: Path, tmp_path: Path) -> None:
    """Two ranks shard each meta-batch of the plug-in's run and end where one process does (the
    all-reduce sums in another order: to 1e-5), its learned rates included."""
    for processes in (1, 2):
        out = str(tmp_path / str(processes))
        _metaopt(plugin, "train", *SINE, "--iterations", "3", "--out", out, processes=processes)
    one, two = (load_checkpoint(tmp_path / n / "checkpoint.pt")["algorithm"] for n in "12")
    pairs = [
        *zip(one["model"].values(), two["model"].values(), strict=True),
        *zip(one["learned"], two["learned"], strict=True),
    ]
    assert len(pairs) == 12
    for a, b in pairs:
        assert (a - b).norm() <= 1e-5 * a.norm()
