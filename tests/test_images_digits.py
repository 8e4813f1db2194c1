"""Real handwriting: scikit-learn's digits written as a folder (``python -m supervised.images
make-digits``), and ``metaopt train images`` on them beating the pretrained baseline."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from metaopt.cli import main
from supervised.images.digits import main as digits_main

pytest.importorskip("sklearn")


def test_make_digits_writes_the_folders_layout(tmp_path: Path, capsys) -> None:
    from sklearn.datasets import load_digits

    assert digits_main(["make-digits", str(tmp_path / "d"), "--size", "16"]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "d")
    folders = sorted((tmp_path / "d").iterdir())
    assert [f.name for f in folders] == [f"digit_{d}" for d in range(10)]
    digits = load_digits()
    assert sum(len(list(f.iterdir())) for f in folders) == len(digits.images) == 1797
    first = np.asarray(Image.open(tmp_path / "d" / f"digit_{digits.target[0]}" / "0000.png"))
    assert first.shape == (16, 16)
    # Upscaled, the 8×8 original is still there: block means follow its 16 grey levels.
    blocks = first.reshape(8, 2, 8, 2).mean(axis=(1, 3))
    assert np.corrcoef(blocks.ravel(), digits.images[0].ravel())[0, 1] > 0.9
    assert digits_main(["make-digits", str(tmp_path / "e"), "--size", "4"]) == 2
    assert "--size must be >= 8" in capsys.readouterr().err and not (tmp_path / "e").exists()


def test_module_runs_as_a_script() -> None:
    command = [sys.executable, "-m", "supervised.images", "make-digits", "--help"]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    assert result.returncode == 0 and "--size" in result.stdout, result.stderr


@pytest.mark.slow  # about two minutes on one thread
def test_meta_learning_on_digits_beats_the_pretrained_baseline(tmp_path: Path) -> None:
    from supervised.images.digits import make_digits

    data = make_digits(tmp_path / "digits", size=14)
    out = tmp_path / "run"
    argv = ["train", "images", "--data-dir", str(data), "--ways", "5", "--shots", "1"]
    argv += ["--rotations", "--train-classes", "6", "--val-classes", "2", "--filters", "32"]
    argv += ["--iterations", "100", "--meta-batch", "8", "--eval-tasks", "100"]
    argv += ["--baseline-steps", "100", "--threads", "1", "--quiet", "--out", str(out)]
    assert main(argv) == 0
    evaluation = json.loads((out / "eval.json").read_text())
    gain = evaluation["meta_minus_baseline"]["1"]  # paired per task, at the trained step count
    assert gain["mean"] - gain["ci95"] > 0, gain
    config = json.loads((out / "config.json").read_text())["config"]
    assert (config["channels"], config["image_size"], config["query_shots"]) == (1, 14, 5)
