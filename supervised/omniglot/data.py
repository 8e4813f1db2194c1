"""N-way K-shot Omniglot (Lake et al., 2015) from a local folder in the official layout.

The data set is 1623 handwritten characters from 50 alphabets, 20 drawings each, distributed as
two zips (``images_background``: 30 alphabets, ``images_evaluation``: 20). Unpacked, a folder
``DATA_DIR`` holds:

    DATA_DIR/images_background/<alphabet>/<character>/*.png
    DATA_DIR/images_evaluation/<alphabet>/<character>/*.png

Both halves are pooled (as MAML and Reptile do), the characters shuffled with ``split_seed`` and
split into ``train_classes`` training, ``val_classes`` validation and the remaining test
characters (Finn et al. 2017 and Nichol et al. 2018: 1200 training characters). With
``rotations`` every character also appears rotated by 90°, 180° and 270°, each rotation a class of
its own (Santoro et al., 2016); the rotations of a character stay in its split, so the splits
share no character. Images are resized to 28×28 grayscale with strokes 1 and background 0.

This room holds what is Omniglot's own (the official layout, the download, a synthetic fixture);
reading, caching and sampling are the ``images`` family's (`supervised.images`), of which
``metaopt train omniglot`` is a preset.

The official zips are fetched only when asked (``--download``). Without network access,
``python -m supervised.omniglot make-fixture DIR`` writes a small synthetic folder in the same
layout (random pen strokes per character, jittered per drawer), which the tests and docs use.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import urllib.error
import urllib.request
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from metaopt.training.family import ConfigError
from supervised.batch import TaskBatch
from supervised.image_config import OMNIGLOT_PRESETS as PRESETS
from supervised.image_config import ROTATIONS, OmniglotConfig
from supervised.images import data as images
from supervised.images.cache import DecodeSettings, decode
from supervised.images.layouts import ClassFiles

__all__ = [
    "OMNIGLOT_URLS",
    "PRESETS",
    "ROTATIONS",
    "SUBSETS",
    "OmniglotConfig",
    "OmniglotData",
    "download_omniglot",
    "load_omniglot",
    "make_fixture",
    "omniglot_classes",
    "sample_episodes",
    "split_characters",
]

SUBSETS = ("images_background", "images_evaluation")

#: The official zips in Brenden Lake's repository (github.com/brendenlake/omniglot, python/).
OMNIGLOT_URLS: Mapping[str, str] = {
    "images_background": "https://github.com/brendenlake/omniglot/raw/master/python/images_background.zip",
    "images_evaluation": "https://github.com/brendenlake/omniglot/raw/master/python/images_evaluation.zip",
}

LAYOUT = (
    "expected {root}/images_background/<alphabet>/<character>/*.png and/or "
    "{root}/images_evaluation/<alphabet>/<character>/*.png (the official Omniglot zips unpacked)"
)


@dataclass(frozen=True)
class OmniglotData:
    """All images of a folder, grouped by character.

    Attributes:
        images: ``[M, S, S]`` uint8, strokes high (255) and background 0.
        starts: ``[C]`` index in ``images`` of each character's first drawing.
        counts: ``[C]`` drawings per character.
        names: ``C`` names ``subset/alphabet/character``.
    """

    images: torch.Tensor
    starts: np.ndarray
    counts: np.ndarray
    names: tuple[str, ...]

    @property
    def num_characters(self) -> int:
        return len(self.names)


def _layout_error(root: Path, problem: str) -> ConfigError:
    hint = (
        "; pass --download to fetch the official zips, or run "
        f"`python -m supervised.omniglot make-fixture {root}` for a small synthetic copy"
    )
    return ConfigError(f"--data-dir {root}: {problem}; {LAYOUT.format(root=root)}{hint}")


def _visible(path: Path) -> list[Path]:
    return sorted(p for p in path.iterdir() if not p.name.startswith("."))


def _character_folders(root: Path) -> list[Path]:
    """Every ``subset/alphabet/character`` folder, checking the layout on the way."""
    if not root.is_dir():
        raise _layout_error(root, "no such folder")
    subsets = [root / name for name in SUBSETS if (root / name).is_dir()]
    if not subsets:
        found = ", ".join(p.name for p in _visible(root)[:5]) or "nothing"
        raise _layout_error(
            root, f"found neither images_background/ nor images_evaluation/ (found {found})"
        )
    characters = []
    for subset in subsets:
        alphabets = _visible(subset)
        if not alphabets:
            raise _layout_error(root, f"{subset} is empty")
        for alphabet in alphabets:
            if not alphabet.is_dir():
                raise _layout_error(root, f"{alphabet} is a file where an alphabet folder belongs")
            entries = _visible(alphabet)
            if not entries:
                raise _layout_error(root, f"alphabet folder {alphabet} is empty")
            for character in entries:
                if not character.is_dir():
                    raise _layout_error(
                        root, f"{character} is a file where a character folder belongs"
                    )
                characters.append(character)
    return characters


def omniglot_classes(root: Path) -> list[ClassFiles]:
    """Every character of the official layout under ``root`` as a class ``subset/alphabet/character``.

    Raises:
        ConfigError: the folder is missing or not in the official layout, or a character folder
            holds no PNG. The message names the path and the layout.
    """
    classes = []
    for character in _character_folders(root):
        files = tuple(sorted(p for p in character.iterdir() if p.suffix.lower() == ".png"))
        if not files:
            raise _layout_error(root, f"character folder {character} holds no .png images")
        classes.append(ClassFiles(str(character.relative_to(root)), files))
    return classes


def load_omniglot(root: str | Path, image_size: int = 28) -> OmniglotData:
    """Read every character's drawings under ``root`` (official layout), resized and inverted.

    Raises:
        ConfigError: the folder is missing or not in the official layout, a character folder
            holds no PNG, or an image cannot be read. The message names the path and the layout.
    """
    classes = omniglot_classes(Path(root))
    pixels = decode(classes, DecodeSettings(image_size, 1, invert=True))
    counts = np.asarray([len(c.files) for c in classes], dtype=np.int64)
    return OmniglotData(
        images=torch.from_numpy(pixels[:, 0]),
        starts=np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64),
        counts=counts,
        names=tuple(c.name for c in classes),
    )


def split_characters(
    num_characters: int, train: int, val: int, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Disjoint training, validation and test character indices from a seeded shuffle."""
    order = np.random.default_rng(seed).permutation(num_characters)
    return order[:train], order[train : train + val], order[train + val :]


def sample_episodes(
    rng: np.random.Generator,
    data: OmniglotData,
    characters: np.ndarray,
    num_tasks: int,
    *,
    ways: int,
    shots: int,
    query_shots: int,
    rotations: int = ROTATIONS,
    minibatch: int = 0,
) -> TaskBatch:
    """Draw ``num_tasks`` N-way K-shot episodes from the classes of ``characters``
    (`supervised.images.data.sample_episodes` on the drawings of ``data``).

    Returns:
        A batch with ``support_x`` ``[B, N·K, 1, S, S]`` float32 in [0, 1], ``support_y``
        ``[B, N·K]`` int64 (class-major order), the query set likewise, and ``info["classes"]``
        ``[B, N]`` (the global class id ``character · rotations + rotation``).
    """
    grouped = images.ImageData(
        images=data.images.numpy()[:, None],
        starts=data.starts,
        counts=data.counts,
        names=data.names,
        splits=(None,) * data.num_characters,
        layout="nested",
    )
    return images.sample_episodes(
        rng,
        grouped,
        characters,
        num_tasks,
        ways=ways,
        shots=shots,
        query_shots=query_shots,
        rotations=rotations,
        minibatch=minibatch,
    )


def download_omniglot(root: str | Path, urls: Mapping[str, str] | None = None) -> Path:
    """Fetch and unpack the official zips into ``root`` (subsets already there are kept).

    Args:
        root: The data folder (created if needed).
        urls: Subset name -> URL of its zip (default `OMNIGLOT_URLS`).

    Raises:
        ConfigError: a download fails, or an archive is not the expected one.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    for subset, url in (OMNIGLOT_URLS if urls is None else urls).items():
        if (root / subset).is_dir():
            continue
        archive = root / f"{subset}.zip.part"
        try:
            with urllib.request.urlopen(url, timeout=60) as response, archive.open("wb") as out:
                shutil.copyfileobj(response, out)
        except (urllib.error.URLError, OSError) as error:
            archive.unlink(missing_ok=True)
            raise ConfigError(f"--download: could not fetch {url}: {error}") from error
        try:
            _extract(archive, root, subset)
        finally:
            archive.unlink(missing_ok=True)
    return root


def _extract(archive: Path, root: Path, subset: str) -> None:
    try:
        with zipfile.ZipFile(archive) as zipped:
            target = root.resolve()
            for member in zipped.namelist():
                # Refuse members that would land outside root ("zip slip").
                if not (root / member).resolve().is_relative_to(target):
                    raise ConfigError(f"--download: {archive.name} holds an unsafe path {member!r}")
            zipped.extractall(root)
    except zipfile.BadZipFile as error:
        raise ConfigError(f"--download: {archive.name} is not a zip archive ({error})") from error
    if not (root / subset).is_dir():
        raise ConfigError(f"--download: the archive for {subset} did not contain {subset}/")


def make_fixture(
    root: str | Path,
    *,
    alphabets: int = 4,
    characters: int = 5,
    drawers: int = 20,
    size: int = 105,
    seed: int = 0,
) -> Path:
    """Write a small synthetic Omniglot in the official layout (for tests and demos).

    Each character is a few random pen strokes; each of its ``drawers`` drawings jitters the
    stroke points and the pen width, so a character is recognisable across drawings and
    characters differ. Half of the alphabets go to ``images_background``, the rest to
    ``images_evaluation``. Files are named like the real ones (``0001_01.png``): black strokes on
    white, ``size``×``size`` (105 as in the real set).
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    background = max(1, (alphabets + 1) // 2)
    serial = 0
    for a in range(alphabets):
        subset = SUBSETS[0] if a < background else SUBSETS[1]
        for c in range(characters):
            serial += 1
            folder = root / subset / f"Alphabet_{a + 1:02d}" / f"character{c + 1:02d}"
            folder.mkdir(parents=True, exist_ok=True)
            strokes = [
                rng.uniform(0.15, 0.85, size=(int(rng.integers(2, 5)), 2)) * size
                for _ in range(int(rng.integers(2, 4)))
            ]
            for d in range(drawers):
                image = Image.new("L", (size, size), color=255)
                pen = ImageDraw.Draw(image)
                width = int(rng.integers(size // 30 + 1, size // 15 + 2))
                for stroke in strokes:
                    points = stroke + rng.normal(0.0, size * 0.03, size=stroke.shape)
                    pen.line([tuple(p) for p in points.tolist()], fill=0, width=width)
                image.save(folder / f"{serial:04d}_{d + 1:02d}.png")
    return root


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m supervised.omniglot make-fixture DIR`` / ``download DIR``."""
    parser = argparse.ArgumentParser(
        prog="python -m supervised.omniglot", description=__doc__.split("\n")[0]
    )
    commands = parser.add_subparsers(dest="command", required=True)
    fixture = commands.add_parser("make-fixture", help="write a small synthetic Omniglot folder")
    fixture.add_argument("dir")
    fixture.add_argument("--alphabets", type=int, default=4)
    fixture.add_argument("--characters", type=int, default=5, help="characters per alphabet")
    fixture.add_argument("--drawers", type=int, default=20, help="drawings per character")
    fixture.add_argument("--seed", type=int, default=0)
    fetch = commands.add_parser("download", help="download and unpack the official zips")
    fetch.add_argument("dir")
    args = parser.parse_args(argv)
    try:
        if args.command == "make-fixture":
            for name in ("alphabets", "characters", "drawers"):
                if getattr(args, name) < 1:
                    raise ConfigError(f"--{name} must be >= 1; got {getattr(args, name)}")
            path = make_fixture(
                args.dir,
                alphabets=args.alphabets,
                characters=args.characters,
                drawers=args.drawers,
                seed=args.seed,
            )
        else:
            path = download_omniglot(args.dir)
    except ConfigError as error:
        print(f"{parser.prog}: error: {error}", file=sys.stderr)
        return 2
    print(path)
    return 0
