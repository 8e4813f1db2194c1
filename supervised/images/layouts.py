"""Where the images of each class are: the folder layouts ``--layout`` names, and ``auto``.

* ``folders``: ``DIR/<class>/<image>``;
* ``nested``: ``DIR/<group>/<class>/<image>`` (Omniglot's ``alphabet/character``);
* ``split-folders``: ``DIR/train|val|test/<class>/<image>`` (CIFAR-FS, tieredImageNet as commonly
  unpacked): the data set's own split;
* ``csv``: ``DIR/train.csv``, ``val.csv``, ``test.csv`` with a header ``filename,label`` and the
  images in ``DIR/images/`` (Ravi & Larochelle's mini-ImageNet): the data set's own split.

Images are PNG or JPEG files; names starting with a dot (such as the decoded-image cache,
``DIR/.metaopt-cache``) are ignored. Reading the layout touches only the file system (no image
is opened): every problem with it is a [`ConfigError`][metaopt.training.ConfigError] naming the
folder.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from metaopt.training.family import ConfigError

__all__ = ["IMAGE_SUFFIXES", "SPLIT_NAMES", "ClassFiles", "detect_layout", "find_classes"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
SPLIT_NAMES = ("train", "val", "test")
CSV_HEADER = ["filename", "label"]


@dataclass(frozen=True)
class ClassFiles:
    """One class: its name, its image files (sorted) and, in a layout that carries its own
    split, the split it belongs to (``None`` otherwise)."""

    name: str
    files: tuple[Path, ...]
    split: str | None = None


def visible(path: Path) -> list[Path]:
    """Entries of a folder whose names do not start with a dot, sorted."""
    return sorted(p for p in path.iterdir() if not p.name.startswith("."))


def _is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES


def detect_layout(root: Path) -> str:
    """The layout of ``root``: ``csv`` when it holds ``train.csv`` and ``images/``,
    ``split-folders`` when its folders are ``train`` and ``val`` and/or ``test``, ``nested``
    when its first class folder holds folders, else ``folders``.

    Raises:
        ConfigError: ``root`` is missing or holds no folder.
    """
    if not root.is_dir():
        raise ConfigError(f"--data-dir {root}: no such folder")
    if (root / "train.csv").is_file() and (root / "images").is_dir():
        return "csv"
    folders = [p for p in visible(root) if p.is_dir()]
    names = {p.name for p in folders}
    if "train" in names and names <= set(SPLIT_NAMES) and len(names) >= 2:
        return "split-folders"
    if not folders:
        raise ConfigError(
            f"--data-dir {root}: no class folders (found {_found(root)}); --layout folders "
            "expects DIR/<class>/<image>"
        )
    inside = visible(folders[0])
    if inside and all(p.is_dir() for p in inside):
        return "nested"
    return "folders"


def _found(root: Path) -> str:
    return ", ".join(p.name for p in visible(root)[:5]) or "nothing"


def _class(folder: Path, name: str, split: str | None = None) -> ClassFiles:
    if not folder.is_dir():
        raise ConfigError(f"--data-dir: {folder} is a file where a class folder belongs")
    files = tuple(p for p in visible(folder) if _is_image(p))
    if not files:
        raise ConfigError(
            f"--data-dir: class folder {folder} holds 0 images (PNG or JPEG files); remove it or "
            "add its images"
        )
    return ClassFiles(name, files, split)


def _folders(root: Path, prefix: str = "", split: str | None = None) -> list[ClassFiles]:
    entries = visible(root)
    if not entries:
        raise ConfigError(f"--data-dir: folder {root} is empty (0 class folders)")
    return [_class(p, f"{prefix}{p.name}", split) for p in entries]


def _nested(root: Path, prefix: str = "") -> list[ClassFiles]:
    classes = []
    groups = visible(root)
    if not groups:
        raise ConfigError(f"--data-dir: folder {root} is empty (0 group folders)")
    for group in groups:
        if not group.is_dir():
            raise ConfigError(f"--data-dir: {group} is a file where a group folder belongs")
        classes += _folders(group, f"{prefix}{group.name}/")
    return classes


def _split_folders(root: Path) -> list[ClassFiles]:
    classes = []
    for split in SPLIT_NAMES:
        if (root / split).is_dir():
            classes += _folders(root / split, f"{split}/", split)
    if not classes:
        raise ConfigError(
            f"--data-dir {root}: --layout split-folders expects DIR/train|val|test/<class>/<image> "
            f"(found {_found(root)})"
        )
    return classes


def _csv(root: Path) -> list[ClassFiles]:
    images = root / "images"
    if not images.is_dir():
        raise ConfigError(f"--data-dir {root}: --layout csv expects the images in {images}/")
    classes = []
    for split in SPLIT_NAMES:
        table = root / f"{split}.csv"
        if not table.is_file():
            continue
        with table.open(newline="") as handle:
            rows = list(csv.reader(handle))
        if not rows or [c.strip() for c in rows[0]] != CSV_HEADER:
            raise ConfigError(
                f"--data-dir: {table} must start with the header filename,label; got "
                f"{','.join(rows[0]) if rows else 'an empty file'}"
            )
        by_label: dict[str, list[Path]] = {}
        for number, row in enumerate(rows[1:], 2):
            if len(row) != 2:
                raise ConfigError(f"--data-dir: {table} line {number} has {len(row)} fields, not 2")
            path = images / row[0].strip()
            if not path.is_file():
                raise ConfigError(
                    f"--data-dir: {table} line {number} names {path}, which is missing"
                )
            by_label.setdefault(row[1].strip(), []).append(path)
        if not by_label:
            raise ConfigError(f"--data-dir: {table} lists 0 images")
        classes += [
            ClassFiles(f"{split}/{label}", tuple(sorted(files)), split)
            for label, files in sorted(by_label.items())
        ]
    if not classes:
        raise ConfigError(f"--data-dir {root}: --layout csv expects train.csv, val.csv, test.csv")
    return classes


def find_classes(root: Path, layout: str) -> tuple[str, list[ClassFiles]]:
    """The layout used (``auto`` resolved) and the classes of ``root`` in it.

    Raises:
        ConfigError: the folder does not match the layout, or a class has no image; the message
            names the folder and the count.
    """
    if not root.is_dir():
        raise ConfigError(f"--data-dir {root}: no such folder")
    if layout == "auto":
        layout = detect_layout(root)
    reader = {
        "folders": _folders,
        "nested": _nested,
        "split-folders": _split_folders,
        "csv": _csv,
    }[layout]
    return layout, reader(root)
