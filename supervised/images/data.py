"""N-way K-shot episodes of an image folder: the classes, their splits, and episodes by index.

A folder is read once (`load_images`: the layout of `supervised.images.layouts`, the pixels of
`supervised.images.cache`) into an `ImageData`: one uint8 array of every image, and per class
its first row and its number of images. Classes are split into training, validation and test
classes by a seeded shuffle (`split_classes`), unless the layout carries its own split. An
episode is then a gather by index (`sample_episodes`): numpy draws the classes and the image
indices (a loop per task and per class), one fancy index gathers the pixels of the whole
meta-batch, and torch rotates and augments whole tensors, with no Python work per image.

With ``rotations`` every base class also appears rotated by 90°, 180° and 270°, each rotation a
class of its own (Santoro et al., 2016); a base class's rotations stay in its split, so no base
class crosses splits.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from metaopt.training.family import ConfigError
from supervised.batch import TaskBatch
from supervised.images.cache import DecodeSettings, describe, load_or_decode
from supervised.images.layouts import ClassFiles, find_classes

__all__ = [
    "ImageData",
    "augment_images",
    "check_episodes",
    "image_shape",
    "load_images",
    "read_classes",
    "sample_episodes",
    "split_classes",
    "split_count",
]

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class ImageData:
    """Every image of a folder, grouped by class.

    Attributes:
        images: ``[M, C, S, S]`` uint8 (a memory-mapped cache file, or an array in memory).
        starts: ``[K]`` row in ``images`` of each class's first image.
        counts: ``[K]`` images per class.
        names: ``K`` class names (``group/class``, ``split/class``, ...).
        splits: ``K`` splits the layout gives (``"train"``, ``"val"``, ``"test"``), or ``None``
            for each class when it gives none.
        layout: The layout read (``auto`` resolved).
    """

    images: np.ndarray
    starts: np.ndarray
    counts: np.ndarray
    names: tuple[str, ...]
    splits: tuple[str | None, ...]
    layout: str

    @property
    def num_classes(self) -> int:
        return len(self.names)

    @property
    def num_characters(self) -> int:
        """Omniglot's word for `num_classes`."""
        return self.num_classes

    @property
    def channels(self) -> int:
        return int(self.images.shape[1])

    @property
    def image_size(self) -> int:
        return int(self.images.shape[-1])


def read_classes(root: Path, layout: str) -> tuple[str, list[ClassFiles]]:
    """``find_classes`` (the layout used and the classes), re-exported for the families."""
    return find_classes(root, layout)


def load_images(
    root: Path,
    layout: str,
    classes: list[ClassFiles],
    settings: DecodeSettings,
    *,
    cache: bool = True,
) -> ImageData:
    """Decode (or memory-map from the cache) the images of ``classes`` found under ``root``."""
    decoded = load_or_decode(root, classes, settings, cache=cache)
    counts = np.asarray([len(c.files) for c in classes], dtype=np.int64)
    return ImageData(
        images=decoded.images,
        starts=np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64),
        counts=counts,
        names=tuple(c.name for c in classes),
        splits=tuple(c.split for c in classes),
        layout=layout,
    )


def image_shape(
    root: Path, classes: list[ClassFiles], settings: DecodeSettings, *, cache: bool = True
) -> tuple[int, int]:
    """The channels and side the images decode to, read without decoding or writing anything."""
    return describe(root, classes, settings, cache=cache)


def split_count(value: float, total: int) -> int:
    """A split size given as a count (``>= 1``) or a fraction of ``total`` (``< 1``, rounded)."""
    return round(value * total) if 0 < value < 1 else int(value)


def split_classes(
    splits: tuple[str | None, ...], train: float, val: float, seed: int
) -> dict[str, np.ndarray]:
    """Class indices of each split: the layout's own split when it gives one, else a seeded
    shuffle of all classes into ``train`` training, ``val`` validation and the rest test classes
    (counts, or fractions of the classes)."""
    if any(s is not None for s in splits):
        return {s: np.flatnonzero(np.asarray(splits, dtype=object) == s) for s in SPLITS}
    total = len(splits)
    n_train, n_val = split_count(train, total), split_count(val, total)
    order = np.random.default_rng(seed).permutation(total)
    return {
        "train": order[:n_train],
        "val": order[n_train : n_train + n_val],
        "test": order[n_train + n_val :],
    }


def sample_episodes(
    rng: np.random.Generator,
    data: ImageData,
    classes: np.ndarray,
    num_tasks: int,
    *,
    ways: int,
    shots: int,
    query_shots: int,
    rotations: int = 1,
    minibatch: int = 0,
    augment: bool = False,
) -> TaskBatch:
    """Draw ``num_tasks`` N-way K-shot episodes from the base classes ``classes``.

    A class is a (base class, rotation) pair; each task picks ``ways`` distinct classes, labels
    them 0..N-1 in the order drawn, and for each picks ``shots + query_shots`` distinct images.

    Returns:
        A batch with ``support_x`` ``[B, N·K, C, S, S]`` float32 in [0, 1], ``support_y``
        ``[B, N·K]`` int64 (class-major order), the query set likewise, and ``info["classes"]``
        ``[B, N]`` (the global class id ``base · rotations + rotation``).
    """
    per_class = shots + query_shots
    num_classes = len(classes) * rotations
    # Python per task and per class, never per image (and the stream Omniglot runs always had).
    picks = np.stack([rng.choice(num_classes, size=ways, replace=False) for _ in range(num_tasks)])
    bases, turns = classes[picks // rotations], picks % rotations
    rows = np.empty((num_tasks, ways, per_class), dtype=np.int64)
    for b in range(num_tasks):
        for n in range(ways):
            c = bases[b, n]
            rows[b, n] = data.starts[c] + rng.choice(data.counts[c], size=per_class, replace=False)
    order = None
    if minibatch:
        order = rng.permuted(np.tile(np.arange(ways * shots), (num_tasks, 1)), axis=1)

    # Rotated and augmented as uint8 (a quarter of the bytes); one division makes each part float.
    pixels = torch.from_numpy(np.ascontiguousarray(data.images[rows]))  # [B, N, K+Q, C, S, S]
    turns_t = torch.from_numpy(turns)
    for k in range(1, rotations):  # one rotation per angle, over every image it applies to
        chosen = turns_t == k
        pixels[chosen] = torch.rot90(pixels[chosen], k, dims=(-2, -1))
    if augment:
        pixels = augment_images(rng, pixels.flatten(0, 2)).view(pixels.shape)
    shape = pixels.shape[-3:]
    labels = torch.arange(ways).view(1, ways, 1)

    def part(lo: int, hi: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = pixels[:, :, lo:hi].reshape(num_tasks, ways * (hi - lo), *shape) / 255.0
        y = labels.expand(num_tasks, ways, hi - lo).reshape(num_tasks, ways * (hi - lo))
        return x, y.contiguous()

    support_x, support_y = part(0, shots)
    query_x, query_y = part(shots, per_class)
    return TaskBatch(
        support_x=support_x,
        support_y=support_y,
        query_x=query_x,
        query_y=query_y,
        loss="ce",
        minibatch=minibatch or None,
        support_order=None if order is None else torch.as_tensor(order, dtype=torch.long),
        info={"classes": torch.as_tensor(bases * rotations + turns)},
    )


def augment_images(rng: np.random.Generator, images: torch.Tensor) -> torch.Tensor:
    """Random crop (zero padding of side/8 on each border) and horizontal flip (probability ½)
    of each image of ``images`` ``[T, C, S, S]`` (any dtype), by one gather for the whole tensor."""
    count, _, side, _ = images.shape
    pad = max(1, side // 8)
    padded = torch.nn.functional.pad(images, (pad, pad, pad, pad))
    dy = torch.from_numpy(rng.integers(0, 2 * pad + 1, size=count))
    dx = torch.from_numpy(rng.integers(0, 2 * pad + 1, size=count))
    flip = torch.from_numpy(rng.random(count) < 0.5)
    steps = torch.arange(side)
    rows = dy[:, None] + steps  # [T, S]
    cols = dx[:, None] + torch.where(flip[:, None], steps.flip(0), steps)
    index = torch.arange(count)[:, None, None, None]
    channel = torch.arange(images.shape[1])[None, :, None, None]
    return padded[index, channel, rows[:, None, :, None], cols[:, None, None, :]]


def check_episodes(
    data_splits: dict[str, np.ndarray],
    counts: np.ndarray,
    names: tuple[str, ...],
    *,
    root: Path,
    ways: int,
    shots: int,
    query_shots: int,
    rotations: int,
) -> None:
    """Raise [`ConfigError`][metaopt.training.ConfigError] when the classes cannot supply the
    configured episodes: a split with fewer classes than ``ways`` (an empty validation split is
    allowed: no validation), or a class with fewer images than ``shots + query_shots``."""
    for split, members in data_splits.items():
        classes = len(members) * rotations
        if split == "val" and not len(members):
            continue
        if ways > classes:
            turns = f" × {rotations} rotations" if rotations > 1 else ""
            raise ConfigError(
                f"--ways {ways} exceeds the {classes} classes of the {split} split of {root} "
                f"({len(members)} classes{turns}); lower --ways or change the split sizes"
            )
    per_class = shots + query_shots
    fewest = int(np.argmin(counts))
    if per_class > counts[fewest]:
        raise ConfigError(
            f"--shots {shots} + --query-shots {query_shots} = {per_class} images per class, but "
            f"class {root / names[fewest]} has only {int(counts[fewest])}"
        )
