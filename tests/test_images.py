"""``metaopt train images``: every layout read from generated folders, ``auto`` detection, the
refusals (one line, exit 2, nothing written), the decoded-image cache, splits, rotations and
augmentation."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from core_helpers import refused
from PIL import Image

from metaopt.cli import main
from metaopt.training.config import resolve_config
from supervised.image_config import ImagesConfig
from supervised.images import cache as image_cache
from supervised.images.data import augment_images, sample_episodes, split_classes
from supervised.images.family import ImagesFamily
from supervised.images.layouts import find_classes

SIDE = 16


def _image(rng: np.random.Generator, colour: bool, side: int = SIDE) -> Image.Image:
    shape = (side, side, 3) if colour else (side, side)
    return Image.fromarray(rng.integers(0, 256, size=shape, dtype=np.uint8))


def _write_class(folder: Path, count: int, *, colour: bool, seed: int, ext: str = "png") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(count):
        _image(rng, colour).save(folder / f"{i:03d}.{ext}")


def make_layout(root: Path, layout: str, *, classes: int = 8, per_class: int = 6, colour=False):
    """A folder of ``classes`` classes in ``layout``; JPEG for colour, PNG for greyscale."""
    ext = "jpg" if colour else "png"
    for c in range(classes):
        if layout == "folders":
            folder = root / f"class{c}"
        elif layout == "nested":
            folder = root / f"group{c % 2}" / f"class{c}"
        elif layout == "split-folders":
            folder = root / ("train", "train", "train", "train", "val", "val", "test", "test")[c]
            folder = folder / f"class{c}"
        else:
            continue
        _write_class(folder, per_class, colour=colour, seed=c, ext=ext)
    if layout == "csv":
        rng = np.random.default_rng(0)
        (root / "images").mkdir(parents=True)
        for split, labels in (("train", range(4)), ("val", range(4, 6)), ("test", range(6, 8))):
            with (root / f"{split}.csv").open("w", newline="") as handle:
                table = csv.writer(handle)
                table.writerow(["filename", "label"])
                for label in labels:
                    for i in range(per_class):
                        name = f"n{label:02d}_{i:03d}.{ext}"
                        _image(rng, colour).save(root / "images" / name)
                        table.writerow([name, f"n{label:02d}"])
    return root


def _config(root: Path, **overrides: object) -> ImagesConfig:
    values = {"data_dir": str(root), "train_classes": 4, "val_classes": 2, **overrides}
    config = resolve_config(ImagesFamily(), {"ways": 2, "shots": 1, "query_shots": 2, **values})
    assert isinstance(config, ImagesConfig)
    return config


LAYOUTS = ("folders", "nested", "split-folders", "csv")


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("colour", [False, True], ids=["grey-png", "rgb-jpeg"])
def test_every_layout_is_read_and_detected(tmp_path: Path, layout: str, colour: bool) -> None:
    root = make_layout(tmp_path / "data", layout, colour=colour)
    found, classes = find_classes(root, "auto")
    assert found == layout
    assert len(classes) == 8 and all(len(c.files) == 6 for c in classes)
    assert find_classes(root, layout)[1] == classes
    family = ImagesFamily()
    config = _config(root)
    assert (config.channels, config.image_size) == ((3 if colour else 1), SIDE)
    assert config.filters == (32 if colour else 64)  # the MAML paper's conv4 for each
    batch = family.sample_batch(config, np.random.default_rng(0), 3, split="test")
    assert batch.support_x.shape == (3, 2, config.channels, SIDE, SIDE)
    assert batch.query_x.shape == (3, 4, config.channels, SIDE, SIDE)
    assert family.make_model(config)(batch.support_x[0]).shape == (2, 2)
    if layout in ("split-folders", "csv"):  # the data set's own split, whatever the flags say
        parts = family.class_splits(config)
        assert [len(parts[s]) for s in ("train", "val", "test")] == [4, 2, 2]
        names = family.data(config).names
        assert all(names[i].startswith(f"{s}/") for s in parts for i in parts[s])


def test_pixels_are_the_files(tmp_path: Path) -> None:
    root = make_layout(tmp_path / "data", "folders", classes=3, per_class=4)
    config = _config(root, train_classes=1, val_classes=1, ways=1)
    data = ImagesFamily().data(config)
    for name, start in zip(data.names, data.starts, strict=True):
        files = sorted((root / name).iterdir())
        for row, path in enumerate(files):
            expected = np.asarray(Image.open(path))
            assert np.array_equal(data.images[start + row, 0], expected)


def test_query_shots_follow_the_colour(tmp_path: Path) -> None:
    grey = make_layout(tmp_path / "grey", "folders", per_class=20)
    rgb = make_layout(tmp_path / "rgb", "folders", per_class=20, colour=True)
    assert _config(grey, query_shots=None).query_shots == 5
    assert _config(rgb, query_shots=None).query_shots == 15
    assert _config(grey, query_shots=None, channels=3).query_shots == 15  # converted to RGB


def _break(root: Path, problem: str) -> list[str]:
    """Spoil a good folder; return the words its refusal must say."""
    if problem == "unreadable":
        bad = root / "class3" / "002.png"
        bad.write_bytes(b"not an image")
        return ["cannot read image", str(bad), "1 unreadable image", str(bad.parent)]
    if problem == "mixed-sizes":
        Image.new("L", (12, 12)).save(root / "class5" / "000.png")
        return ["2 sizes", "47 of 16×16", "1 of 12×12", str(root / "class5"), "--image-size"]
    if problem == "empty-class":
        (root / "class9").mkdir()
        return [str(root / "class9"), "0 images"]
    if problem == "few-images":
        for path in sorted((root / "class2").iterdir())[2:]:
            path.unlink()
        return ["--shots 1 + --query-shots 2 = 3", str(root / "class2"), "only 2"]
    if problem == "ways":
        return ["--ways 3 exceeds the 2 classes of the val split", str(root), "2 classes"]
    raise AssertionError(problem)


@pytest.mark.parametrize(
    "problem", ["unreadable", "mixed-sizes", "empty-class", "few-images", "ways"]
)
def test_refusals_are_one_line_and_write_nothing(
    tmp_path: Path, problem: str, capsys: pytest.CaptureFixture[str]
) -> None:
    root = make_layout(tmp_path / "data", "folders")
    words = _break(root, problem)
    ways = "3" if problem == "ways" else "2"
    out = tmp_path / "run"
    before = sorted(p.relative_to(root) for p in root.rglob("*"))
    argv = ["train", "images", "--data-dir", str(root), "--ways", ways, "--shots", "1"]
    argv += ["--query-shots", "2", "--train-classes", "4", "--val-classes", "2"]
    err = refused([*argv, "--iterations", "1", "--out", str(out)], capsys)
    for word in words:
        assert word in err, err
    assert not out.exists()
    assert sorted(p.relative_to(root) for p in root.rglob("*")) == before  # no cache either


@pytest.mark.parametrize(
    ("flags", "words"),
    [
        (["--layout", "grid"], ["--layout", "auto, folders, nested, split-folders, csv"]),
        (["--train-classes", "1.5"], ["--train-classes", "fraction in (0, 1)", "1.5"]),
        (["--channels", "2"], ["--channels must be one of 1, 3"]),
        (["--train-classes", "0.9", "--val-classes", "0.1"], ["leave no test classes", "8"]),
        (["--augment"], ["--augment", "colour images", "1 channel"]),
        (["--model", "resnet12", "--image-size", "12"], ["--model resnet12", "16", "12"]),
    ],
)
def test_flag_refusals(tmp_path: Path, flags, words, capsys: pytest.CaptureFixture[str]) -> None:
    root = make_layout(tmp_path / "data", "folders")
    argv = ["train", "images", "--data-dir", str(root), "--ways", "2", "--query-shots", "2"]
    argv += ["--train-classes", "4", "--val-classes", "2"]
    err = refused([*argv, *flags, "--out", str(tmp_path / "run")], capsys)
    for word in words:
        assert word in err, err
    assert not (tmp_path / "run").exists()


def test_csv_naming_a_missing_file_isrefused(tmp_path: Path, capsys) -> None:
    root = make_layout(tmp_path / "data", "csv")
    with (root / "val.csv").open("a") as handle:
        handle.write("missing.png,n04\n")
    err = refused(
        ["train", "images", "--data-dir", str(root), "--out", str(tmp_path / "r")], capsys
    )
    assert "val.csv line 14" in err and "missing.png" in err


def test_split_sizes_as_counts_or_fractions() -> None:
    for train, val in ((6, 2), (0.6, 0.2)):
        parts = split_classes((None,) * 10, train, val, seed=3)
        assert [len(parts[s]) for s in ("train", "val", "test")] == [6, 2, 2]
        every = np.concatenate(list(parts.values()))
        assert sorted(every.tolist()) == list(range(10))
    again = split_classes((None,) * 10, 0.6, 0.2, seed=3)
    assert all(np.array_equal(parts[s], again[s]) for s in parts)
    other = split_classes((None,) * 10, 0.6, 0.2, seed=4)
    assert not np.array_equal(parts["train"], other["train"])


def test_rotations_are_new_classes_within_each_split(tmp_path: Path) -> None:
    root = make_layout(tmp_path / "data", "folders", classes=10)
    family = ImagesFamily()
    config = _config(root, rotations=True, ways=5, train_classes=6, val_classes=2)
    data = family.data(config)
    bases = {}
    for split in ("train", "val", "test"):
        batch = family.sample_batch(config, np.random.default_rng(1), 40, split=split)
        classes = batch.info["classes"]
        assert set((classes % 4).flatten().tolist()) == {0, 1, 2, 3}
        bases[split] = set((classes // 4).flatten().tolist())
        assert bases[split] <= set(family.class_splits(config)[split].tolist())
        for task in range(3):  # each image is a rotation of one of its base class's images
            for way in range(5):
                base, turn = divmod(int(classes[task, way]), 4)
                own = data.images[data.starts[base] : data.starts[base] + data.counts[base]]
                image = torch.rot90(batch.support_x[task, way], -turn, dims=(-2, -1))
                assert any(torch.equal(image * 255, torch.from_numpy(o).float()) for o in own)
    assert bases["train"].isdisjoint(bases["val"]) and bases["train"].isdisjoint(bases["test"])
    assert bases["val"].isdisjoint(bases["test"])


def _cache_files(root: Path) -> list[Path]:
    return sorted((root / image_cache.CACHE_FOLDER).glob("*.npy"))


def test_cache_is_reused_and_rebuilt_when_the_files_change(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = make_layout(tmp_path / "data", "folders")
    first = ImagesFamily().data(_config(root))
    assert isinstance(first.images, np.memmap) and len(_cache_files(root)) == 1

    def no_decoding(*args: object) -> None:
        raise AssertionError("decoded again")

    with monkeypatch.context() as patched:
        patched.setattr(image_cache, "decode", no_decoding)
        again = ImagesFamily().data(_config(root))  # a new process would do the same
    assert np.array_equal(again.images, first.images)
    changed = root / "class1" / "000.png"
    Image.new("L", (SIDE, SIDE), color=7).save(changed)
    os.utime(changed, ns=(1, 1))
    rebuilt = ImagesFamily().data(_config(root))
    assert _cache_files(root) == [Path(rebuilt.images.filename)]  # the stale file is gone
    row = rebuilt.starts[rebuilt.names.index("class1")]
    assert np.all(rebuilt.images[row] == 7) and not np.all(first.images[row] == 7)
    resized = ImagesFamily().data(_config(root, image_size=6))  # other settings: another file
    assert resized.images.shape[-1] == 6 and len(_cache_files(root)) == 2
    assert ImagesFamily().data(_config(root, cache=False)).images.shape == first.images.shape
    assert len(_cache_files(root)) == 2


def test_cache_goes_to_the_user_folder_when_the_data_folder_is_not_writable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = make_layout(tmp_path / "data", "folders")
    (root / image_cache.CACHE_FOLDER).write_text("a file where the cache folder would go")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "user-cache"))
    data = ImagesFamily().data(_config(root))
    assert Path(data.images.filename).parent == tmp_path / "user-cache" / "metaopt" / "images"


def _crop_reference(image: torch.Tensor, pad: int) -> list[torch.Tensor]:
    """Every crop, flipped or not, of ``image`` zero-padded by ``pad`` (a plain loop)."""
    side = image.shape[-1]
    padded = torch.zeros(image.shape[0], side + 2 * pad, side + 2 * pad)
    padded[:, pad : pad + side, pad : pad + side] = image
    crops = []
    for dy in range(2 * pad + 1):
        for dx in range(2 * pad + 1):
            crop = padded[:, dy : dy + side, dx : dx + side]
            crops += [crop, crop.flip(-1)]
    return crops


def test_augmentation_crops_and_flips_by_seed() -> None:
    images = torch.rand(30, 3, 16, 16)
    a = augment_images(np.random.default_rng(5), images)
    b = augment_images(np.random.default_rng(5), images)
    c = augment_images(np.random.default_rng(6), images)
    assert a.shape == images.shape and torch.equal(a, b) and not torch.equal(a, c)
    for original, augmented in zip(images, a, strict=True):
        assert any(torch.equal(augmented, crop) for crop in _crop_reference(original, 2))
    assert sum(not torch.equal(x, y) for x, y in zip(images, a, strict=True)) > 20


def test_augment_applies_to_training_episodes_only(tmp_path: Path) -> None:
    root = make_layout(tmp_path / "data", "folders", colour=True)
    family = ImagesFamily()
    plain, augmented = _config(root), _config(root, augment=True)
    for split, differs in (("train", True), ("test", False)):
        x = family.sample_batch(plain, np.random.default_rng(2), 4, split=split).support_x
        y = family.sample_batch(augmented, np.random.default_rng(2), 4, split=split).support_x
        assert torch.equal(x, y) != differs
    data = family.data(plain)
    batch = sample_episodes(
        np.random.default_rng(0), data, np.arange(8), 5, ways=3, shots=2, query_shots=1
    )
    assert batch.support_x.shape == (5, 6, 3, SIDE, SIDE) and batch.query_x.shape[1] == 3
    assert torch.equal(batch.support_y[0], torch.tensor([0, 0, 1, 1, 2, 2]))


def test_train_then_eval_through_the_command(tmp_path: Path, capsys) -> None:
    root = make_layout(tmp_path / "data", "nested", colour=True)
    out = tmp_path / "run"
    argv = ["train", "images", "--data-dir", str(root), "--ways", "2", "--query-shots", "2"]
    argv += ["--train-classes", "4", "--val-classes", "2", "--filters", "4", "--meta-batch", "2"]
    argv += ["--iterations", "2", "--eval-tasks", "4", "--baseline-steps", "1", "--out", str(out)]
    assert main(argv) == 0
    assert "--layout auto chose nested" in capsys.readouterr().err
    saved = json.loads((out / "config.json").read_text())["config"]
    assert saved["layout"] == "auto"  # as asked; what auto chose is said, and read again
    resolved = {k: saved[k] for k in ("channels", "image_size", "query_shots", "filters")}
    assert resolved == {"channels": 3, "image_size": SIDE, "query_shots": 2, "filters": 4}
    assert main(["eval", str(out), "--tasks", "4", "--steps", "0,1"]) == 0
    assert json.loads((out / "eval.json").read_text())["tasks"] == 4


def test_data_dir_is_required(tmp_path: Path, capsys) -> None:
    err = refused(["train", "images", "--out", str(tmp_path / "run")], capsys)
    assert "--data-dir is required" in err and not (tmp_path / "run").exists()


def test_image_size_resizes_mixed_sizes(tmp_path: Path) -> None:
    root = make_layout(tmp_path / "data", "folders")
    Image.new("L", (12, 12), color=200).save(root / "class5" / "000.png")
    config = _config(root, image_size=10)
    data = ImagesFamily().data(config)
    assert data.images.shape == (48, 1, 10, 10) and config.image_size == 10
    assert np.all(data.images[data.starts[data.names.index("class5")]] == 200)
