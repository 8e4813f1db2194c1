"""Real handwritten characters on any machine: scikit-learn's digits as an image folder.

scikit-learn ships the UCI optical-recognition digits inside its wheel
(``sklearn.datasets.load_digits``: 1797 greyscale 8×8 images of 0–9 written by 43 people, 16
grey levels). `make_digits` writes them as PNG files in the ``folders`` layout,
``DIR/digit_<d>/<n>.png``, upscaled to ``size``×``size`` (bilinear), ink bright on black, so that
``metaopt train images`` can be tried on real handwriting that it has never seen.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from metaopt.training.family import ConfigError

__all__ = ["main", "make_digits"]


def make_digits(root: str | Path, *, size: int = 28) -> Path:
    """Write the 1797 digits under ``root`` (``digit_0/`` … ``digit_9/``), ``size`` pixels square.

    Raises:
        ConfigError: scikit-learn is not installed (it is in the ``dev`` extra).
    """
    try:
        from sklearn.datasets import load_digits
    except ImportError as error:
        raise ConfigError(
            "make-digits needs scikit-learn (pip install 'metaopt[dev]' or scikit-learn)"
        ) from error
    digits = load_digits()
    root = Path(root)
    pixels = np.rint(digits.images * (255 / 16)).astype(np.uint8)  # 0..16 grey levels
    for number, (image, label) in enumerate(zip(pixels, digits.target, strict=True)):
        folder = root / f"digit_{label}"
        folder.mkdir(parents=True, exist_ok=True)
        big = Image.fromarray(image).resize((size, size), Image.Resampling.BILINEAR)
        big.save(folder / f"{number:04d}.png")
    return root


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m supervised.images make-digits DIR [--size S]``."""
    parser = argparse.ArgumentParser(
        prog="python -m supervised.images", description=__doc__.split("\n")[0]
    )
    commands = parser.add_subparsers(dest="command", required=True)
    digits = commands.add_parser(
        "make-digits", help="write scikit-learn's 1797 handwritten digits as DIR/digit_<d>/*.png"
    )
    digits.add_argument("dir")
    digits.add_argument("--size", type=int, default=28, help="side of the written images")
    args = parser.parse_args(argv)
    try:
        if args.size < 8:
            raise ConfigError(f"--size must be >= 8 (the digits are 8×8); got {args.size}")
        path = make_digits(args.dir, size=args.size)
    except ConfigError as error:
        print(f"{parser.prog}: error: {error}", file=sys.stderr)
        return 2
    print(path)
    return 0
