"""``metaopt train images``: N-way K-shot classification of any image folder.

The folder's layout (`supervised.images.layouts`, ``--layout auto`` detects it and says which),
its images decoded once into a cached uint8 array (`supervised.images.cache`), classes split into
train, validation and test classes (`supervised.images.data`), and the network of
`supervised.models.build_image_model`; the evaluation and plots are every supervised family's
(`supervised.family.SupervisedFamily`), the periodic one on the validation classes.
``metaopt train omniglot`` is this family with Omniglot's folder and defaults
(`supervised.omniglot.family`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from torch import nn

from metaopt.algorithms import MetaLearner
from metaopt.training.distributed import DistInfo
from metaopt.training.family import ConfigError, TrainConfig
from supervised.batch import TaskBatch
from supervised.family import SupervisedFamily
from supervised.image_config import IMAGES, QUERY_SHOTS, ImageEpisodesConfig
from supervised.images import data as images
from supervised.images.cache import DecodeSettings
from supervised.images.data import ImageData
from supervised.images.layouts import ClassFiles
from supervised.models import build_image_model

__all__ = ["ImagesFamily"]

LOGGER = logging.getLogger("metaopt.progress")


class ImagesFamily(SupervisedFamily, options=IMAGES):
    """N-way K-shot classification of the images under ``--data-dir``."""

    name = "images"
    metric = "accuracy"
    higher_is_better = True
    eval_chunk = 10  # measured on Omniglot: larger vmapped chunks of conv nets are slower on CPU
    #: Store 255 − value (Omniglot draws black strokes on white; strokes become the signal).
    invert: ClassVar[bool] = False
    #: What the messages call a class.
    noun: ClassVar[str] = "classes"

    def __init__(self) -> None:
        # Reading a folder is the slow part; one family instance reads it once.
        self._classes: dict[tuple[str, str], tuple[str, list[ClassFiles]]] = {}
        self._loaded: dict[tuple[Any, ...], ImageData] = {}
        self._said: set[tuple[str, str]] = set()

    def find_classes(self, config: Any) -> tuple[str, list[ClassFiles]]:
        """The layout used and the classes under ``config.data_dir`` (read once)."""
        root = Path(config.data_dir)
        key = (str(root.resolve()), config.layout)
        if key not in self._classes:
            self._classes[key] = images.read_classes(root, config.layout)
        return self._classes[key]

    def validate(self, config: TrainConfig) -> None:
        """Read the folder now (layout, sizes, splits, then the pixels), so that a folder that
        cannot supply the episodes fails before training starts, having written nothing. Fills
        the fields left unset (``channels``, ``image_size``, ``query_shots``, ``filters``)."""
        assert isinstance(config, ImageEpisodesConfig)
        root = Path(config.data_dir)
        _, classes = self.find_classes(config)
        splits = self._check_splits(config, classes)
        settings = DecodeSettings(config.image_size, config.channels, self.invert)
        channels, side = images.image_shape(root, classes, settings, cache=config.cache)
        if config.augment and channels == 1:
            raise ConfigError(
                f"--augment: random crop and flip are for colour images; {root} decodes to "
                "1 channel (pass --channels 3 to convert, or leave out --augment)"
            )
        config.channels, config.image_size = channels, side
        if config.query_shots is None:
            config.query_shots = QUERY_SHOTS[channels]
        if config.filters is None:
            config.filters = 32 if channels == 3 else 64
        counts = np.asarray([len(c.files) for c in classes])
        images.check_episodes(
            splits,
            counts,
            tuple(c.name for c in classes),
            root=root,
            ways=config.ways,
            shots=config.shots,
            query_shots=config.query_shots,
            rotations=config.rotation_count,
        )
        if config.model != "conv4":  # before decoding: the stub refuses other models
            self.build_model(config)
        super().validate(config)  # with the fields filled: --per-step-bn builds the model
        data = self.data(config)
        said = (str(root.resolve()), data.layout)
        # Once, and only for a folder that passed every check (a refusal stays one line).
        if getattr(config, "layout", None) == "auto" and said not in self._said:
            self._said.add(said)
            LOGGER.info(
                "%s: --layout auto chose %s for %s: %d classes, %d images of %d×%d×%d",
                self.name,
                data.layout,
                root,
                data.num_classes,
                len(data.images),
                channels,
                side,
                side,
            )

    def _check_splits(self, config: Any, classes: list[ClassFiles]) -> dict[str, np.ndarray]:
        total = len(classes)
        given = any(c.split is not None for c in classes)
        if not given:
            train = images.split_count(config.train_classes, total)
            val = images.split_count(config.val_classes, total)
            if train < 1 or train + val >= total:
                raise ConfigError(
                    f"--train-classes {config.train_classes} + --val-classes "
                    f"{config.val_classes} ({train} + {val}) leave no test {self.noun}: "
                    f"{config.data_dir} holds {total} {self.noun}"
                )
        return self.class_splits(config)

    def class_splits(self, config: Any) -> dict[str, np.ndarray]:
        """Base-class indices of each split (``"train"``, ``"val"``, ``"test"``)."""
        _, classes = self.find_classes(config)
        return images.split_classes(
            tuple(c.split for c in classes),
            config.train_classes,
            config.val_classes,
            config.split_seed,
        )

    def data(self, config: Any) -> ImageData:
        """The decoded images of ``config.data_dir`` (from the cache file when it matches)."""
        layout, classes = self.find_classes(config)
        settings = DecodeSettings(config.image_size, config.channels, self.invert)
        key = (str(Path(config.data_dir).resolve()), layout, settings, config.cache)
        if key not in self._loaded:
            self._loaded[key] = images.load_images(
                Path(config.data_dir), layout, classes, settings, cache=config.cache
            )
        return self._loaded[key]

    def build_model(self, config: Any) -> nn.Module:
        return build_image_model(
            config.model,
            config.ways,
            filters=config.filters,
            image_size=config.image_size,
            channels=config.channels,
        )

    def sample_batch(
        self,
        config: Any,
        rng: np.random.Generator,
        num_tasks: int,
        *,
        split: str = "train",
    ) -> TaskBatch:
        return images.sample_episodes(
            rng,
            self.data(config),
            self.class_splits(config)[split],
            num_tasks,
            ways=config.ways,
            shots=config.shots,
            query_shots=config.query_shots,
            rotations=config.rotation_count,
            minibatch=config.minibatch if split == "train" else 0,
            augment=config.augment and split == "train",
        )

    def periodic_eval(
        self, algo: MetaLearner, config: Any, *, group: DistInfo | None = None
    ) -> dict[str, float]:
        if not len(self.class_splits(config)["val"]):
            return {}
        return super().periodic_eval(algo, config, group=group)

    def validation_tasks(self, config: Any) -> int:
        """``--val-episodes`` episodes of the validation classes."""
        return int(config.val_episodes)

    def selection_metric(self, config: TrainConfig) -> str | None:
        """Accuracy on the validation classes after the trained inner steps selects ``best.pt``
        (none without validation classes)."""
        if not len(self.class_splits(config)["val"]):
            return None
        return f"val_{self.metric}_after"
