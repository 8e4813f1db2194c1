"""Decode a folder's images once into one uint8 array, and keep it on disk between runs.

The array is ``[M, C, S, S]`` (M images, C channels, side S), the classes' images one after the
other. With the cache on, it is written as ``<fingerprint>.npy`` under ``DIR/.metaopt-cache/``
(or ``$XDG_CACHE_HOME/metaopt/images/`` when ``DIR`` cannot be written) and memory-mapped by later
runs: the fingerprint hashes every file's path, size and modification time and the decoding
settings, so changed data or settings build a new file and never read a stale one; a file built
for the same folder and settings from older files is deleted when its successor is written.

Decoding is the only work per image; an episode is then gathered from the array by index
(`supervised.images.data.sample_episodes`).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from metaopt.training.family import ConfigError
from supervised.images.layouts import ClassFiles

__all__ = [
    "CACHE_FOLDER",
    "DecodeSettings",
    "Decoded",
    "cache_dirs",
    "decode",
    "describe",
    "fingerprint",
    "load_or_decode",
]

CACHE_FOLDER = ".metaopt-cache"
#: Bumped when the decoding itself changes, so that old cache files are not read.
FORMAT = 1
#: PIL modes that are greyscale (anything else is treated as colour).
GREY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "F", "P;L"})


@dataclass(frozen=True)
class DecodeSettings:
    """How the files become pixels: ``image_size`` and ``channels`` as asked (``None``: from the
    files), and ``invert`` (255 − value: Omniglot draws black strokes on white)."""

    image_size: int | None
    channels: int | None
    invert: bool = False


@dataclass(frozen=True)
class Decoded:
    """The decoded images: ``images`` ``[M, C, S, S]`` uint8 (memory-mapped when cached), with
    ``channels`` and ``image_size`` as decoded; ``path`` is the cache file (or ``None``)."""

    images: np.ndarray
    channels: int
    image_size: int
    path: Path | None


def fingerprint(root: Path, classes: Sequence[ClassFiles], settings: DecodeSettings) -> str:
    """A hash of every file's path (relative to ``root``), size and mtime, the class names and
    the decoding settings."""
    digest = hashlib.sha256(repr((FORMAT, settings)).encode())
    for cls in classes:
        digest.update(f"\0{cls.name}\0{cls.split}".encode())
        for path in cls.files:
            stat = path.stat()
            digest.update(
                f"\0{path.relative_to(root)}\0{stat.st_size}\0{stat.st_mtime_ns}".encode()
            )
    return digest.hexdigest()[:32]


def cache_dirs(root: Path) -> list[Path]:
    """Where a cache file of ``root`` may be: ``root/.metaopt-cache``, then
    ``$XDG_CACHE_HOME/metaopt/images`` (``~/.cache`` without the variable) for read-only data."""
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return [root / CACHE_FOLDER, base / "metaopt" / "images"]


def _cached(root: Path, key: str) -> tuple[Path, dict[str, int]] | None:
    for folder in cache_dirs(root):
        path, meta = folder / f"{key}.npy", folder / f"{key}.json"
        if path.is_file() and meta.is_file():
            return path, json.loads(meta.read_text())
    return None


def _unreadable(path: Path, error: Exception) -> ConfigError:
    return ConfigError(
        f"--data-dir: cannot read image {path} ({error}); 1 unreadable image in {path.parent}; "
        "images must be PNG or JPEG files"
    )


def _headers(classes: Sequence[ClassFiles]) -> tuple[list[tuple[int, int]], bool]:
    """Each file's (width, height), and whether any is colour; opens headers only."""
    sizes, colour = [], False
    for cls in classes:
        for path in cls.files:
            try:
                with Image.open(path) as image:
                    sizes.append(image.size)
                    colour = colour or image.mode not in GREY_MODES
            except (OSError, UnidentifiedImageError, ValueError) as error:
                raise _unreadable(path, error) from error
    return sizes, colour


def _side(classes: Sequence[ClassFiles], sizes: list[tuple[int, int]]) -> int:
    """The images' common side, refusing mixed or non-square sizes."""
    counts = Counter(sizes)
    if len(counts) > 1 or next(iter(counts))[0] != next(iter(counts))[1]:
        (common, _), *rest = counts.most_common()
        odd = rest[0][0] if rest else common
        files = [p for cls in classes for p in cls.files]
        example = files[sizes.index(odd)]
        shown = ", ".join(f"{n} of {w}×{h}" for (w, h), n in counts.most_common(3))
        raise ConfigError(
            f"--data-dir: images of {len(counts)} sizes ({shown}; e.g. {example} in "
            f"{example.parent}) need --image-size to resize them to one square side"
        )
    return next(iter(counts))[0]


def describe(
    root: Path, classes: Sequence[ClassFiles], settings: DecodeSettings, *, cache: bool
) -> tuple[int, int]:
    """The channels and side the images decode to, without decoding them (from a matching cache
    file, else from the files' headers); writes nothing.

    Raises:
        ConfigError: an image cannot be opened, or sizes differ without ``image_size``.
    """
    if cache and (hit := _cached(root, fingerprint(root, classes, settings))) is not None:
        return int(hit[1]["channels"]), int(hit[1]["image_size"])
    sizes, colour = _headers(classes)
    side = settings.image_size or _side(classes, sizes)
    return settings.channels or (3 if colour else 1), side


def decode(classes: Sequence[ClassFiles], settings: DecodeSettings) -> np.ndarray:
    """Every image of ``classes``, in order, as ``[M, C, S, S]`` uint8. Resizing is Lanczos;
    colour to grey is PIL's ITU-R 601-2 luma.

    Raises:
        ConfigError: an image cannot be read, or sizes differ without ``image_size``.
    """
    sizes, colour = _headers(classes)
    side = settings.image_size or _side(classes, sizes)
    channels = settings.channels or (3 if colour else 1)
    mode = "RGB" if channels == 3 else "L"
    out = np.empty((len(sizes), channels, side, side), dtype=np.uint8)
    row = 0
    for cls in classes:
        for path in cls.files:
            try:
                with Image.open(path) as image:
                    pixels = image.convert(mode)
                    if pixels.size != (side, side):
                        pixels = pixels.resize((side, side), Image.Resampling.LANCZOS)
                    array = np.asarray(pixels, dtype=np.uint8)
            except (OSError, UnidentifiedImageError, ValueError) as error:
                raise _unreadable(path, error) from error
            out[row] = array[None] if channels == 1 else array.transpose(2, 0, 1)
            row += 1
    if settings.invert:
        np.subtract(255, out, out=out)
    return out


def load_or_decode(
    root: Path, classes: Sequence[ClassFiles], settings: DecodeSettings, *, cache: bool
) -> Decoded:
    """The decoded images of ``classes``: memory-mapped from the cache file when one matches the
    files and settings, else decoded (and, with ``cache``, written for the next run: under
    ``root`` when it can be written, else in the user's cache folder)."""
    if not cache:
        images = decode(classes, settings)
        return Decoded(images, images.shape[1], images.shape[-1], None)
    key = fingerprint(root, classes, settings)
    hit = _cached(root, key)
    if hit is None:
        images = decode(classes, settings)
        described = {
            "channels": images.shape[1],
            "image_size": images.shape[-1],
            "source": _source(root, settings),
        }
        for folder in cache_dirs(root):
            try:
                folder.mkdir(parents=True, exist_ok=True)
                _write_atomic(folder / f"{key}.npy", images)
                _write_atomic(folder / f"{key}.json", json.dumps(described).encode())
                _remove_stale(folder, key, described["source"])
                break
            except OSError:
                continue
        else:  # nowhere to write: keep the decoded array in memory
            return Decoded(images, images.shape[1], images.shape[-1], None)
        hit = _cached(root, key)
        assert hit is not None
    path, described = hit
    # Copy-on-write: writable for torch.from_numpy, while the file itself never changes.
    images = np.load(path, mmap_mode="c")
    return Decoded(images, int(described["channels"]), int(described["image_size"]), path)


def _source(root: Path, settings: DecodeSettings) -> str:
    """What a cache file was built from, but for the files' sizes and times: a newer file of the
    same source replaces it."""
    return repr((str(root.resolve()), FORMAT, settings))


def _remove_stale(folder: Path, key: str, source: str) -> None:
    """Delete the older cache files of ``source`` in ``folder`` (the data changed since). A run
    still mapping one keeps reading it: the mapping outlives the name."""
    for meta in folder.glob("*.json"):
        if meta.stem == key:
            continue
        try:
            if json.loads(meta.read_text()).get("source") == source:
                meta.with_suffix(".npy").unlink(missing_ok=True)
                meta.unlink(missing_ok=True)
        except (OSError, ValueError):
            continue  # another process's file, half-written or already gone: leave it


def _write_atomic(path: Path, payload: np.ndarray | bytes) -> None:
    """Write an array (``.npy``) or bytes through a temporary file and rename, so that a reader
    never sees half a file."""
    handle = tempfile.NamedTemporaryFile(dir=path.parent, prefix=".part-", delete=False)
    try:
        with handle:
            if isinstance(payload, bytes):
                handle.write(payload)
            else:
                np.save(handle, payload)
        os.replace(handle.name, path)
    except BaseException:
        Path(handle.name).unlink(missing_ok=True)
        raise
