"""``metaopt train omniglot``: N-way K-shot Omniglot from a local folder (Lake et al., 2015).

A preset of ``metaopt train images`` (`supervised.images.family.ImagesFamily`): the same reading,
cache, splits, episodes, network and evaluation, with Omniglot's official folder layout (fetched
first with ``--download``; `supervised.omniglot.data`), strokes inverted to be the signal, and the
MAML paper's Omniglot defaults (`supervised.image_config.OmniglotConfig`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from supervised.image_config import OMNIGLOT
from supervised.images.family import ImagesFamily
from supervised.images.layouts import ClassFiles
from supervised.omniglot import data as omniglot

__all__ = ["OmniglotFamily"]


class OmniglotFamily(ImagesFamily, options=OMNIGLOT):
    """N-way K-shot Omniglot from a local folder (Lake et al., 2015)."""

    name = "omniglot"
    invert = True
    noun = "characters"

    def find_classes(self, config: Any) -> tuple[str, list[ClassFiles]]:
        """The characters of the official layout (with ``--download``, missing subsets are
        fetched first)."""
        root = Path(config.data_dir)
        key = (str(root.resolve()), "omniglot")
        if key not in self._classes:
            if config.download and not all((root / s).is_dir() for s in omniglot.SUBSETS):
                omniglot.download_omniglot(root)
            self._classes[key] = "nested", omniglot.omniglot_classes(root)
        return self._classes[key]

    def characters(self, config: Any, split: str) -> np.ndarray:
        """Indices of the characters of ``split`` ("train", "val" or "test")."""
        return self.class_splits(config)[split]
