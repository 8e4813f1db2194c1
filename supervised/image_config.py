"""Configuration of the image families (``images``, and ``omniglot``, a preset of the same
code): the fields they share (`ImageEpisodesConfig`) and each family's own.

Like `supervised.config`, this module imports no torch: the ``metaopt`` command describes the
families' flags from it (the ``metaopt.family_options`` entry points).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

from metaopt.options import check_choice, check_int, flag
from metaopt.training.family import ConfigError, FamilyOptions, option
from supervised.config import SupervisedConfig, image_presets

__all__ = [
    "IMAGES",
    "IMAGES_PRESETS",
    "IMAGE_MODELS",
    "LAYOUTS",
    "OMNIGLOT",
    "OMNIGLOT_PRESETS",
    "QUERY_SHOTS",
    "ROTATIONS",
    "ImageEpisodesConfig",
    "ImagesConfig",
    "OmniglotConfig",
    "check_class_count",
]

#: Rotations of each character that ``--rotations`` adds as classes (0°, 90°, 180°, 270°).
ROTATIONS = 4

#: How ``metaopt train images`` finds the classes under ``--data-dir`` (`supervised.images.layouts`).
LAYOUTS = ("auto", "folders", "nested", "split-folders", "csv")
#: The networks of the image families (`supervised.models.build_image_model`).
IMAGE_MODELS = ("conv4", "resnet12")
#: Query images per class when ``--query-shots`` is not given: the papers' 15 for colour images,
#: Omniglot's 5 for greyscale ones.
QUERY_SHOTS = {1: 5, 3: 15}


@dataclass
class ImageEpisodesConfig(SupervisedConfig):
    """What the image families (``images``, ``omniglot``) share: N-way K-shot episodes of a folder.

    ``channels``, ``image_size``, ``query_shots`` and ``filters`` may be left unset (``None``):
    the family fills them from the data when the run starts (``config.json`` records the values
    used), so that one command serves greyscale 28×28 and colour 84×84 folders.
    """

    inner_lr: float = option(0.4)
    meta_batch: int = option(32)
    batch_norm: str = option(
        "batch",
        "BatchNorm in adaptation: batch (each task normalises with its own batch's statistics, "
        "as MAML and Reptile do on Omniglot) or running (each layer as its train/eval mode says)",
    )
    data_dir: str | None = option(None, "folder holding the images (see --layout); required")
    ways: int = option(5, "classes N per task")
    shots: int = option(1, "support images K per class")
    query_shots: int | None = option(
        None,
        "query images per class (default: 15 for colour images, as the papers; 5 for greyscale)",
    )
    rotations: bool = option(False, "add 90°, 180°, 270° rotations of each class as new classes")
    image_size: int | None = option(
        None, "side of the resized square images (default: the images' own size, which must agree)"
    )
    channels: int | None = option(
        None, "1 (greyscale) or 3 (RGB); images are converted (default: 3 if any image is colour)"
    )
    augment: bool = option(
        False, "random crop (padding side/8) and horizontal flip of training images (RGB only)"
    )
    train_classes: float = option(
        0.64, "classes in the training split: a count, or a fraction below 1 of all classes"
    )
    val_classes: float = option(
        0.16, "classes in the validation split: a count or a fraction (the rest are test)"
    )
    split_seed: int = option(0, "seed of the class shuffle that defines the splits")
    model: str = option("conv4", "network: conv4 (Finn et al. 2017) or resnet12")
    filters: int | None = option(
        None, "filters per convolution (default: 32 with max-pooling for colour, 64 strided else)"
    )
    minibatch: int = option(0, "support images per inner step, walking one shuffled epoch (0: all)")
    cache: bool = option(
        True,
        "keep the decoded images in a memory-mapped .npy file under DIR/.metaopt-cache (or "
        "$XDG_CACHE_HOME/metaopt when DIR is read-only), rebuilt when the files change",
    )
    baseline_steps: int = option(500, "Adam steps of the pretrained baseline (0: untrained)")
    baseline_tasks: int = option(8)
    # The standard protocol's model selection: validate every --eval-every iterations and after
    # the last on --val-episodes episodes of the validation classes; best.pt keeps the best
    # (metaopt.training.selection).
    eval_every: int = option(
        500,
        "validate on --val-episodes episodes of the validation classes every N iterations and "
        "after the last, keeping the best as best.pt (0: after the last only)",
    )
    val_episodes: int = option(
        600, "validation episodes of each periodic evaluation (papers' count: 600)"
    )

    #: The data may move (same images, another folder) between a run and its resumption.
    EVALUATION_ONLY: ClassVar[tuple[str, ...]] = ("data_dir", "cache", "val_episodes")
    RESUMABLE: ClassVar[tuple[str, ...]] = (*SupervisedConfig.RESUMABLE, *EVALUATION_ONLY)

    def activation_elements(self) -> int:
        """Support and query images, each with its pixels and, per convolution block
        (convolution, batch norm, ReLU; the side halving each time), three maps of ``filters``
        channels: about 4 × filters numbers per pixel of the input over the four blocks."""
        query = self.query_shots if self.query_shots is not None else QUERY_SHOTS[3]
        images = self.ways * (self.shots + query)
        side, filters = self.image_size or 84, self.filters or 64
        return images * side**2 * ((self.channels or 3) + 4 * filters)

    def validate(self) -> None:
        super().validate()
        for name in ("ways", "shots", "val_episodes"):
            check_int(flag(name), getattr(self, name), 1)
        for name in ("query_shots", "image_size", "filters"):
            if getattr(self, name) is not None:
                check_int(flag(name), getattr(self, name), 1)
        if self.channels is not None:
            check_choice(flag("channels"), self.channels, (1, 3))
        for name in ("split_seed", "minibatch"):
            check_int(flag(name), getattr(self, name), 0)
        # A whole count reads back as one (`--train-classes 12` is 12, not 12.0, in config.json).
        self.train_classes = check_class_count(flag("train_classes"), self.train_classes, 1)
        self.val_classes = check_class_count(flag("val_classes"), self.val_classes, 0)
        check_choice(flag("model"), self.model, IMAGE_MODELS)
        check_choice(flag("batch_norm"), self.batch_norm, ("batch", "running"))
        if self.data_dir is None:
            raise ConfigError("--data-dir is required: the folder that holds the images")
        if not self.data_dir:
            raise ConfigError("--data-dir must name a folder; got an empty string")
        if self.augment and self.channels == 1:
            raise ConfigError(
                "--augment: random crop and flip are for colour images (--channels 3); got "
                "--channels 1 (a flipped character is another character)"
            )

    @property
    def rotation_count(self) -> int:
        return ROTATIONS if self.rotations else 1


def check_class_count(label: str, value: object, low: int) -> float:
    """A split size: a whole count >= ``low`` (returned as an ``int``), or a fraction strictly
    between 0 and 1."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigError(f"{label} must be a class count or a fraction in (0, 1); got {value!r}")
    if 0 < value < 1:
        return value
    if value == int(value) and value >= low:
        return int(value)
    raise ConfigError(
        f"{label} must be a whole class count >= {low} or a fraction in (0, 1); got {value!r}"
    )


@dataclass
class ImagesConfig(ImageEpisodesConfig):
    """N-way K-shot classification of any image folder; the defaults are MAML's 5-way 1-shot
    setting (Finn et al., 2017)."""

    preset: str | None = image_presets()
    iterations: int = option(60000, "meta-iterations (MAML paper: 60000)")
    layout: str = option(
        "auto",
        "how DIR holds the classes: folders (DIR/<class>/<image>), nested "
        "(DIR/<group>/<class>/<image>), split-folders (DIR/train|val|test/<class>/<image>), csv "
        "(DIR/train.csv, val.csv, test.csv with filename,label and DIR/images/), or auto (detect)",
    )

    def validate(self) -> None:
        super().validate()
        check_choice(flag("layout"), self.layout, LAYOUTS)


@dataclass
class OmniglotConfig(ImageEpisodesConfig):
    """N-way K-shot Omniglot; the defaults are MAML's 5-way 1-shot setting (Finn et al., 2017)."""

    preset: str | None = image_presets()
    iterations: int = option(60000, "meta-iterations (MAML paper: 60000)")
    data_dir: str | None = option(
        "data/omniglot", "folder holding images_background/ and images_evaluation/"
    )
    download: bool = option(False, "download the official Omniglot zips into --data-dir if missing")
    query_shots: int | None = option(5, "query images per class")
    rotations: bool = option(True, "add 90°, 180°, 270° rotations of each character as classes")
    image_size: int | None = option(28, "side of the resized square images")
    channels: int | None = option(1, "1 (greyscale, as the papers) or 3")
    train_classes: float = option(1200, "characters in the training split (or a fraction)")
    val_classes: float = option(100, "characters in the validation split (the rest are test)")
    split_seed: int = option(0, "seed of the character shuffle that defines the splits")
    filters: int | None = option(64, "filters per convolution")

    EVALUATION_ONLY: ClassVar[tuple[str, ...]] = (*ImageEpisodesConfig.EVALUATION_ONLY, "download")
    RESUMABLE: ClassVar[tuple[str, ...]] = (*SupervisedConfig.RESUMABLE, *EVALUATION_ONLY)


OMNIGLOT_PRESETS: dict[str, dict[str, Any]] = {
    "maml": {},
    # Nichol et al. (2018), Omniglot 5-way 5-shot: inner Adam at 1e-3 (their β1 = 0 is not
    # offered here), 5 inner steps on minibatches of 10, meta-batch 5, meta step 1 annealed to 0.
    "reptile": {
        "algo": "reptile",
        "shots": 5,
        "inner_optimizer": "adam",
        "inner_lr": 1e-3,
        "inner_steps": 5,
        "minibatch": 10,
        "meta_batch": 5,
        "outer_optimizer": "sgd",
        "outer_lr": 1.0,
        "anneal": True,
        "iterations": 100000,
    },
    # MAML++ (Antoniou et al., 2019, "How to train your MAML", §4-5 and the Omniglot configs of
    # their code, github.com/AntreasAntoniou/HowToTrainYourMAMLPytorch, experiment_config/
    # omniglot_maml++-omniglot_*): 5 inner steps, LSLR from an inner rate of 0.1, per-step
    # BatchNorm, meta-batch 8, Adam at 1e-3 cosine-annealed to 1e-5 over 100 epochs of 500
    # iterations, the multi-step loss annealed over the first 10 epochs, first order for the
    # first 50 epochs (the paper's derivative-order annealing; the released configs set
    # first_order_to_second_order_epoch = -1, second order throughout).
    "mamlpp": {
        "algo": "maml",
        "inner_steps": 5,
        "inner_lr": 0.1,
        "lslr": True,
        "per_step_bn": True,
        "multi_step_loss": True,
        "msl_iterations": 10 * 500,
        "first_order_until": 50 * 500,
        "meta_batch": 8,
        "outer_optimizer": "adam",
        "outer_lr": 1e-3,
        "outer_schedule": "cosine",
        "outer_lr_min": 1e-5,
        "iterations": 100 * 500,
    },
}

#: ``metaopt train images``'s presets are Omniglot's: the papers' settings and MAML++'s.
IMAGES_PRESETS: dict[str, dict[str, Any]] = OMNIGLOT_PRESETS


IMAGES = FamilyOptions(
    "N-way K-shot classification of any image folder (--layout folders, nested, split-folders, csv)",
    ImagesConfig,
    IMAGES_PRESETS,
)
OMNIGLOT = FamilyOptions(
    "N-way K-shot Omniglot from a local folder (images_background/, images_evaluation/)",
    OmniglotConfig,
    OMNIGLOT_PRESETS,
)
