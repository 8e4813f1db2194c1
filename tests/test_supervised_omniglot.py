"""Omniglot on a generated folder: loading, episodes, rotations, splits, errors, download path."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from supervised_helpers import FIXTURE, FIXTURE_SPLIT, omniglot_dir_fixture  # noqa: F401 - fixtures

from metaopt.training.config import resolve_config
from metaopt.training.family import ConfigError
from supervised.omniglot.data import (
    OmniglotConfig,
    download_omniglot,
    load_omniglot,
    make_fixture,
    sample_episodes,
    split_characters,
)
from supervised.omniglot.data import main as omniglot_main
from supervised.omniglot.family import OmniglotFamily

CHARACTERS = FIXTURE["alphabets"] * FIXTURE["characters"]


def _config(data_dir: Path, **overrides: object) -> OmniglotConfig:
    config = resolve_config(
        OmniglotFamily(), {"data_dir": str(data_dir), **FIXTURE_SPLIT, **overrides}
    )
    assert isinstance(config, OmniglotConfig)
    return config


def test_loader_reads_the_layout(omniglot_dir: Path) -> None:
    data = load_omniglot(omniglot_dir, 28)
    assert data.num_characters == CHARACTERS
    assert data.images.shape == (CHARACTERS * FIXTURE["drawers"], 28, 28)
    assert data.images.dtype == torch.uint8
    assert np.all(data.counts == FIXTURE["drawers"])
    assert {name.split("/")[0] for name in data.names} == {"images_background", "images_evaluation"}
    # Strokes (black in the files) become high values; the background (white) becomes 0.
    assert data.images.float().mean() < 60 and data.images.max() > 200


def test_episode_shapes_and_labels(omniglot_dir: Path) -> None:
    family = OmniglotFamily()
    config = _config(omniglot_dir, ways=4, shots=2, query_shots=3)
    batch = family.sample_tasks(config, np.random.default_rng(0), 6)
    assert batch.support_x.shape == (6, 4 * 2, 1, 28, 28)
    assert batch.query_x.shape == (6, 4 * 3, 1, 28, 28)
    assert batch.support_y.dtype == torch.long
    assert torch.equal(batch.support_y[0], torch.tensor([0, 0, 1, 1, 2, 2, 3, 3]))
    assert 0.0 <= float(batch.support_x.min()) and float(batch.support_x.max()) <= 1.0
    assert batch.info["classes"].shape == (6, 4)
    for classes in batch.info["classes"]:
        assert len(set(classes.tolist())) == 4  # N distinct classes per task
    model = family.make_model(config)
    assert model(batch.support_x[0]).shape == (8, 4)


def test_episodes_are_reproducible(omniglot_dir: Path) -> None:
    family = OmniglotFamily()
    config = _config(omniglot_dir)
    a = family.sample_tasks(config, np.random.default_rng(11), 3)
    b = family.sample_tasks(config, np.random.default_rng(11), 3)
    c = family.sample_tasks(config, np.random.default_rng(12), 3)
    assert torch.equal(a.support_x, b.support_x) and torch.equal(a.query_x, b.query_x)
    assert not torch.equal(a.support_x, c.support_x)


def test_rotations_are_extra_classes_made_of_rotated_drawings(omniglot_dir: Path) -> None:
    data = load_omniglot(omniglot_dir, 28)
    characters = np.arange(data.num_characters)
    batch = sample_episodes(
        np.random.default_rng(0), data, characters, 40, ways=5, shots=1, query_shots=0, rotations=4
    )
    classes = batch.info["classes"]
    assert set((classes % 4).flatten().tolist()) == {0, 1, 2, 3}
    drawings = data.images.float() / 255
    for task in range(40):
        for way in range(5):
            character, turn = divmod(int(classes[task, way]), 4)
            image = batch.support_x[task, way, 0]
            unrotated = torch.rot90(image, -turn, dims=(-2, -1))
            own = drawings[data.starts[character] : data.starts[character] + data.counts[character]]
            assert any(torch.equal(unrotated, d) for d in own)
    unrotated = sample_episodes(
        np.random.default_rng(0), data, characters, 10, ways=5, shots=1, query_shots=1, rotations=1
    )
    assert int(unrotated.info["classes"].max()) < data.num_characters


def test_splits_are_disjoint_and_cover_every_character() -> None:
    train, val, test = split_characters(100, 70, 10, seed=3)
    assert (len(train), len(val), len(test)) == (70, 10, 20)
    assert set(train).isdisjoint(val) and set(train).isdisjoint(test) and set(val).isdisjoint(test)
    assert sorted([*train, *val, *test]) == list(range(100))
    again = split_characters(100, 70, 10, seed=3)
    assert all(np.array_equal(x, y) for x, y in zip((train, val, test), again, strict=True))


def test_training_and_test_episodes_use_disjoint_characters(omniglot_dir: Path) -> None:
    family = OmniglotFamily()
    config = _config(omniglot_dir, ways=3)
    seen = {}
    for split in ("train", "val", "test"):
        batch = family.sample_batch(config, np.random.default_rng(0), 30, split=split)
        seen[split] = set((batch.info["classes"] // 4).flatten().tolist())
    assert seen["train"].isdisjoint(seen["test"]) and seen["train"].isdisjoint(seen["val"])
    assert seen["val"].isdisjoint(seen["test"])
    assert (
        len(seen["test"])
        <= CHARACTERS - FIXTURE_SPLIT["train_classes"] - FIXTURE_SPLIT["val_classes"]
    )


def _copy(source: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(source, tmp_path / "copy"))


def test_missing_folder_says_what_layout_is_expected(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        _config(tmp_path / "nowhere")
    message = str(caught.value)
    assert "--data-dir" in message and "no such folder" in message
    assert "images_background/<alphabet>/<character>/*.png" in message
    assert "--download" in message and "make-fixture" in message


def test_folder_without_the_subsets(tmp_path: Path) -> None:
    (tmp_path / "pictures").mkdir()
    with pytest.raises(ConfigError, match="neither images_background/ nor images_evaluation/"):
        _config(tmp_path)


def test_malformed_layouts(omniglot_dir: Path, tmp_path: Path) -> None:
    root = _copy(omniglot_dir, tmp_path)
    stray = root / "images_background" / "Alphabet_01" / "stray.png"
    shutil.copy(next((root / "images_background" / "Alphabet_01" / "character01").iterdir()), stray)
    with pytest.raises(ConfigError, match="is a file where a character folder belongs"):
        _config(root)
    stray.unlink()
    empty = root / "images_background" / "Alphabet_01" / "character01"
    for png in empty.iterdir():
        png.unlink()
    with pytest.raises(ConfigError, match=r"character01 holds no \.png images"):
        _config(root)


def test_unreadable_image_is_named(omniglot_dir: Path, tmp_path: Path) -> None:
    root = _copy(omniglot_dir, tmp_path)
    broken = sorted((root / "images_evaluation").rglob("*.png"))[5]
    broken.write_bytes(b"this is not a png")
    with pytest.raises(ConfigError) as caught:
        _config(root)
    assert str(broken) in str(caught.value) and "cannot read image" in str(caught.value)


@pytest.mark.parametrize(
    ("overrides", "words"),
    [
        ({"ways": 13}, ["--ways 13", "12 classes", "val split"]),
        (
            {"ways": 17, "train_classes": 10, "val_classes": 6},
            ["--ways 17", "16 classes", "test split"],
        ),
        ({"ways": 13, "rotations": False}, ["--ways 13", "12 classes", "train split"]),
        ({"shots": 15, "query_shots": 6}, ["--shots 15", "--query-shots 6", "21", "only 20"]),
        (
            {"train_classes": 18, "val_classes": 2},
            ["--train-classes 18", "no test characters", "20"],
        ),
        ({"shots": 0}, ["--shots", ">= 1"]),
    ],
)
def test_episodes_the_folder_cannot_supply(omniglot_dir: Path, overrides, words) -> None:
    with pytest.raises(ConfigError) as caught:
        _config(omniglot_dir, **overrides)
    for word in words:
        assert word in str(caught.value), str(caught.value)


def _official_zips(source: Path, tmp_path: Path) -> dict[str, str]:
    """Zip a folder's two subsets like the official archives; return their file:// URLs."""
    urls = {}
    for subset in ("images_background", "images_evaluation"):
        archive = tmp_path / f"{subset}.zip"
        with zipfile.ZipFile(archive, "w") as zipped:
            for path in sorted((source / subset).rglob("*.png")):
                zipped.write(path, path.relative_to(source))
        urls[subset] = archive.as_uri()
    return urls


def test_download_unpacks_the_official_archives(omniglot_dir: Path, tmp_path: Path) -> None:
    urls = _official_zips(omniglot_dir, tmp_path)
    target = download_omniglot(tmp_path / "downloaded", urls)
    assert load_omniglot(target).num_characters == CHARACTERS
    assert not list(target.glob("*.part"))


def test_download_flag_fetches_missing_data_before_training(
    omniglot_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    urls = _official_zips(omniglot_dir, tmp_path)
    monkeypatch.setattr("supervised.omniglot.data.OMNIGLOT_URLS", urls)  # no network here
    target = tmp_path / "fresh"
    with pytest.raises(ConfigError, match="--download"):
        _config(target)  # without the flag, nothing is fetched
    config = _config(target, download=True)
    assert OmniglotFamily().data(config).num_characters == CHARACTERS


def test_download_failures_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="could not fetch"):
        download_omniglot(
            tmp_path / "a", {"images_background": (tmp_path / "missing.zip").as_uri()}
        )
    bogus = tmp_path / "bogus.zip"
    bogus.write_bytes(b"not a zip")
    with pytest.raises(ConfigError, match="not a zip archive"):
        download_omniglot(tmp_path / "b", {"images_background": bogus.as_uri()})
    wrong = tmp_path / "wrong.zip"
    with zipfile.ZipFile(wrong, "w") as zipped:
        zipped.writestr("something_else/readme.txt", "hello")
    with pytest.raises(ConfigError, match="did not contain images_background/"):
        download_omniglot(tmp_path / "c", {"images_background": wrong.as_uri()})


def test_make_fixture_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "fixture"
    assert omniglot_main(["make-fixture", str(out), "--alphabets", "2"]) == 0
    assert load_omniglot(out).num_characters == 2 * 5
    assert omniglot_main(["make-fixture", str(out), "--alphabets", "0"]) == 2
    assert "--alphabets must be >= 1" in capsys.readouterr().err


def test_module_runs_as_a_script(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "supervised.omniglot", "make-fixture", str(tmp_path / "f")]
    result = subprocess.run(
        [*command, "--alphabets", "1", "--characters", "2", "--drawers", "2"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(tmp_path / "f")


def test_fixture_is_deterministic(tmp_path: Path) -> None:
    a = load_omniglot(make_fixture(tmp_path / "a", alphabets=1, characters=2, drawers=3, seed=5))
    b = load_omniglot(make_fixture(tmp_path / "b", alphabets=1, characters=2, drawers=3, seed=5))
    assert torch.equal(a.images, b.images)
