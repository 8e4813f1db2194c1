"""The supervised families' own networks (`conv4`, `resnet12`, and `build_image_model`, which
picks one by name; their MLPs are `metaopt.nn.mlp`), and seeded construction that leaves global
RNG alone.

Every BatchNorm here normalises with the statistics of the batch it is given and keeps no running
averages (``track_running_stats=False``). That is how MAML and Reptile use it (a task's support
or query set is one batch; Nichol et al. call it the transductive setting), it leaves no buffers
for the inner loop to carry, and it behaves the same in train and eval mode, under
``torch.func.vmap`` and in the compiled engine.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

import torch
from torch import nn

from metaopt.nn import ACTIVATIONS
from metaopt.training.family import ConfigError
from supervised.config import ACTIVATION_NAMES

__all__ = ["IMAGE_MODELS", "ResNet12", "build_image_model", "conv4", "resnet12", "seeded"]

assert tuple(ACTIVATIONS) == ACTIVATION_NAMES  # the names the configs check, without torch

#: The networks `build_image_model` builds, by name.
IMAGE_MODELS = ("conv4", "resnet12")

#: ResNet-12's widths in the few-shot literature (Oreshkin et al., 2018; Lee et al., 2019).
RESNET12_WIDTHS = (64, 160, 320, 640)

ModuleT = TypeVar("ModuleT", bound=nn.Module)


def seeded(build: Callable[[], ModuleT], seed: int) -> ModuleT:
    """Call ``build()`` with torch's generator seeded by ``seed``, then restore the generator.

    ``torch.nn`` layers draw their initial weights from the global generator. Forking it makes a
    model's initialisation a function of ``seed`` alone, whatever ran before, without changing the
    random stream of anything that runs after.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def _batch_norm(width: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(width, track_running_stats=False)


def conv4(
    ways: int, *, filters: int = 64, image_size: int = 28, channels: int = 1, pool: bool = False
) -> nn.Sequential:
    """The few-shot image classifier of Vinyals et al. (2016), as MAML and Reptile use it.

    Four blocks of 3×3 convolution, BatchNorm (batch statistics, see the module docstring) and
    ReLU, then a linear head giving ``ways`` logits. Input ``[N, channels, H, W]``.

    * ``pool=False`` (Omniglot in Finn et al., 2017): the convolutions have stride 2 (padding 1),
      taking a 28×28 image to 2×2×``filters``.
    * ``pool=True`` (mini-ImageNet in Finn et al., 2017, with 32 filters on 84×84 RGB): stride 1
      (padding 1) and a 2×2 max-pooling after each ReLU, taking 84×84 to 5×5×``filters``.
    """
    layers: list[nn.Module] = []
    size, width = image_size, channels
    for _ in range(4):
        layers += [
            nn.Conv2d(width, filters, kernel_size=3, stride=1 if pool else 2, padding=1),
            _batch_norm(filters),
            nn.ReLU(),
        ]
        if pool:
            layers.append(nn.MaxPool2d(2))
        size, width = size // 2 if pool else (size + 1) // 2, filters
    if size < 1:
        raise ValueError(
            f"conv4 with pool=True needs images of at least 16 pixels; got {image_size}"
        )
    layers += [nn.Flatten(), nn.Linear(width * size * size, ways)]
    return nn.Sequential(*layers)


class _Residual(nn.Module):
    """One ResNet-12 block: three 3×3 convolutions with BatchNorm, leaky ReLU (0.1) between them,
    a 1×1 convolution (and BatchNorm) on the shortcut, leaky ReLU after the sum, 2×2
    max-pooling."""

    def __init__(self, width_in: int, width: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(width_in, width, 3, padding=1, bias=False),
            _batch_norm(width),
            nn.LeakyReLU(0.1),
            nn.Conv2d(width, width, 3, padding=1, bias=False),
            _batch_norm(width),
            nn.LeakyReLU(0.1),
            nn.Conv2d(width, width, 3, padding=1, bias=False),
            _batch_norm(width),
        )
        self.shortcut = nn.Sequential(nn.Conv2d(width_in, width, 1, bias=False), _batch_norm(width))
        self.out = nn.Sequential(nn.LeakyReLU(0.1), nn.MaxPool2d(2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.body(x) + self.shortcut(x))


class ResNet12(nn.Module):
    """ResNet-12 as the few-shot literature uses it (Oreshkin et al., 2018; Lee et al., 2019):
    four `_Residual` blocks of widths ``widths``, global average pooling and a linear head.

    Without DropBlock and with batch-statistics BatchNorm, so that it runs under every engine.
    """

    def __init__(self, ways: int, *, channels: int = 3, widths: Sequence[int] = RESNET12_WIDTHS):
        super().__init__()
        if len(widths) != 4:
            raise ValueError(f"ResNet-12 has 4 blocks; got {len(widths)} widths")
        blocks, width_in = [], channels
        for width in widths:
            blocks.append(_Residual(width_in, width))
            width_in = width
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Linear(width_in, ways)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(x).mean(dim=(-2, -1)))


def resnet12(
    ways: int,
    *,
    channels: int = 3,
    image_size: int = 84,
    widths: Sequence[int] = RESNET12_WIDTHS,
) -> ResNet12:
    """`ResNet12` for ``image_size``-pixel images (at least 16: four 2×2 poolings)."""
    if image_size < 16:
        raise ValueError(f"resnet12 needs images of at least 16 pixels; got {image_size}")
    return ResNet12(ways, channels=channels, widths=widths)


def build_image_model(
    name: str, ways: int, *, filters: int | None = None, image_size: int, channels: int
) -> nn.Module:
    """The image network ``name`` (one of `IMAGE_MODELS`), with the papers' defaults.

    ``conv4``: 2×2 max-pooling for colour images (mini-ImageNet's network in Finn et al., 2017;
    32 filters unless ``filters`` says otherwise), strided convolutions for greyscale ones
    (Omniglot's; 64 filters). ``resnet12``: widths (64, 160, 320, 640), or ``filters`` × (1, 2.5,
    5, 10).

    Raises:
        ConfigError: an unknown ``name``, or images too small for the network's four halvings.
    """
    if name == "conv4":
        pool = channels == 3
        if pool and image_size < 16:
            raise ConfigError(
                f"--image-size {image_size} is too small for conv4 with max-pooling (four halvings "
                "of colour images need a side of at least 16)"
            )
        width = filters if filters is not None else (32 if pool else 64)
        return conv4(ways, filters=width, image_size=image_size, channels=channels, pool=pool)
    if name == "resnet12":
        if image_size < 16:
            raise ConfigError(
                f"--model resnet12 needs images of at least 16 pixels (four 2×2 poolings); got "
                f"--image-size {image_size}"
            )
        widths = (
            RESNET12_WIDTHS
            if filters is None
            else (filters, filters * 5 // 2, filters * 5, filters * 10)
        )
        return resnet12(ways, channels=channels, image_size=image_size, widths=widths)
    raise ConfigError(f"--model must be one of {', '.join(IMAGE_MODELS)}; got {name!r}")
