"""``metaopt train omniglot``: N-way K-shot Omniglot from a local folder (Lake et al., 2015).

The images from `supervised.omniglot.data` (read once per folder, fetched first with
``--download``), characters split into train, validation and test classes, the conv4 network
(`supervised.models.conv4`); the evaluation and plots are every supervised family's
(`supervised.family.SupervisedFamily`), the periodic one on the validation classes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from torch import nn

from metaopt.algorithms import MetaLearner
from metaopt.training.distributed import DistInfo
from metaopt.training.family import TrainConfig
from supervised.batch import TaskBatch
from supervised.config import OMNIGLOT
from supervised.family import SPLITS, SupervisedFamily
from supervised.models import conv4
from supervised.omniglot import data as omniglot
from supervised.omniglot.data import OmniglotConfig, OmniglotData

__all__ = ["OmniglotFamily"]


class OmniglotFamily(SupervisedFamily, options=OMNIGLOT):
    """N-way K-shot Omniglot from a local folder (Lake et al., 2015)."""

    name = "omniglot"
    metric = "accuracy"
    higher_is_better = True
    eval_chunk = 10  # measured: larger vmapped chunks of conv nets are slower on CPU

    def __init__(self) -> None:
        # Decoding the PNGs is the slow part; one family instance reads a folder once.
        self._loaded: dict[tuple[str, int], OmniglotData] = {}

    def data(self, config: OmniglotConfig) -> OmniglotData:
        """The images of ``config.data_dir`` (with ``--download``, missing subsets are fetched first)."""
        root = Path(config.data_dir)
        key = (str(root.resolve()), config.image_size)
        if key not in self._loaded:
            if config.download and not all((root / s).is_dir() for s in omniglot.SUBSETS):
                omniglot.download_omniglot(root)
            self._loaded[key] = omniglot.load_omniglot(root, config.image_size)
        return self._loaded[key]

    def validate(self, config: TrainConfig) -> None:
        """Read the folder now, so that a missing or malformed one fails before training starts."""
        assert isinstance(config, OmniglotConfig)
        super().validate(config)
        omniglot.check_episodes(config, self.data(config), Path(config.data_dir))

    def characters(self, config: OmniglotConfig, split: str) -> np.ndarray:
        """Indices of the characters of ``split`` ("train", "val" or "test")."""
        data = self.data(config)
        omniglot.check_episodes(config, data, Path(config.data_dir))
        parts = omniglot.split_characters(
            data.num_characters, config.train_classes, config.val_classes, config.split_seed
        )
        return dict(zip(SPLITS, parts, strict=True))[split]

    def build_model(self, config: OmniglotConfig) -> nn.Module:
        return conv4(config.ways, filters=config.filters, image_size=config.image_size)

    def sample_batch(
        self,
        config: OmniglotConfig,
        rng: np.random.Generator,
        num_tasks: int,
        *,
        split: str = "train",
    ) -> TaskBatch:
        return omniglot.sample_episodes(
            rng,
            self.data(config),
            self.characters(config, split),
            num_tasks,
            ways=config.ways,
            shots=config.shots,
            query_shots=config.query_shots,
            rotations=config.rotation_count,
            minibatch=config.minibatch if split == "train" else 0,
        )

    def periodic_eval(
        self, algo: MetaLearner, config: OmniglotConfig, *, group: DistInfo | None = None
    ) -> dict[str, float]:
        if config.val_classes == 0:
            return {}
        return super().periodic_eval(algo, config, group=group)

    def validation_tasks(self, config: OmniglotConfig) -> int:
        """``--val-episodes`` episodes of the validation classes."""
        return config.val_episodes

    def selection_metric(self, config: TrainConfig) -> str | None:
        """Accuracy on the validation classes after the trained inner steps selects ``best.pt``
        (none without validation classes)."""
        assert isinstance(config, OmniglotConfig)
        return f"val_{self.metric}_after" if config.val_classes else None
