"""The supervised families' own network (`conv4`; their MLPs are `metaopt.nn.mlp`), and seeded
construction that leaves global RNG alone."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import torch
from torch import nn

from metaopt.nn import ACTIVATIONS
from metaopt.training.family import ConfigError
from supervised.config import ACTIVATION_NAMES

__all__ = ["build_image_model", "conv4", "seeded"]

assert tuple(ACTIVATIONS) == ACTIVATION_NAMES  # the names the configs check, without torch

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


def conv4(
    ways: int, *, filters: int = 64, image_size: int = 28, channels: int = 1, pool: bool = False
) -> nn.Sequential:
    """The few-shot image classifier of Vinyals et al. (2016), as MAML and Reptile use on Omniglot.

    Four blocks of 3×3 convolution with stride 2 (padding 1), BatchNorm and ReLU take a 28×28
    image to 2×2×``filters``; a linear head gives ``ways`` logits. Input ``[N, channels, H, W]``.
    With ``pool``, each convolution has stride 1 and the block ends with 2×2 max-pooling (MAML on
    mini-ImageNet: 32 filters, 84×84 to 5×5).

    BatchNorm always normalises with the statistics of the batch it is given and keeps no running
    averages (``track_running_stats=False``). That is how MAML and Reptile use it (a task's support
    or query set is one batch; Nichol et al. call it the transductive setting), it leaves no
    buffers for the inner loop to carry, and it behaves the same in train and eval mode and under
    ``torch.func.vmap``.
    """
    layers: list[nn.Module] = []
    size, width = image_size, channels
    for _ in range(4):
        layers += [
            nn.Conv2d(width, filters, kernel_size=3, stride=1 if pool else 2, padding=1),
            nn.BatchNorm2d(filters, track_running_stats=False),
            nn.ReLU(),
        ]
        if pool:
            layers.append(nn.MaxPool2d(2))
        size, width = (size // 2 if pool else (size + 1) // 2), filters
    layers += [nn.Flatten(), nn.Linear(width * size * size, ways)]
    return nn.Sequential(*layers)


def build_image_model(
    name: str, ways: int, *, filters: int, image_size: int, channels: int
) -> nn.Module:
    """The network ``--model`` names for ``channels``-channel ``image_size``² images: ``conv4``
    as in the MAML paper (max-pooling for colour images, strided convolutions for greyscale).

    Raises:
        ConfigError: a model this build does not have (``resnet12`` comes with the conv nets'
            speed work).
    """
    if name != "conv4":
        raise ConfigError(f"--model {name} is not available in this build; use --model conv4")
    if channels == 3 and image_size < 16:
        raise ConfigError(
            f"--image-size {image_size} is too small for conv4 with max-pooling (four halvings "
            "of colour images need a side of at least 16)"
        )
    return conv4(
        ways, filters=filters, image_size=image_size, channels=channels, pool=channels == 3
    )
