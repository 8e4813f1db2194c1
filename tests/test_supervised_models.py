"""The image networks: shapes, parameter counts against hand counts, and MAML on them giving the
same meta-gradient on the loop and vectorised engines."""

from __future__ import annotations

import pytest
import torch

import metaopt
from supervised.batch import TaskBatch
from supervised.models import build_image_model, conv4, resnet12, seeded


def _parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_conv4_default_is_the_omniglot_network() -> None:
    model = conv4(5)
    assert model(torch.zeros(7, 1, 28, 28)).shape == (7, 5)
    # 64 filters: conv 1×64×9 + 64 bias + BatchNorm 128; three of 64×64×9 + 64 + 128; the head
    # reads 2×2×64 features into 5 logits.
    assert _parameters(model) == (576 + 64 + 128) + 3 * (36864 + 64 + 128) + (256 * 5 + 5)
    assert not any(isinstance(m, torch.nn.MaxPool2d) for m in model.modules())


def test_conv4_with_pooling_is_the_mini_imagenet_network() -> None:
    model = conv4(5, filters=32, image_size=84, channels=3, pool=True)
    assert model(torch.zeros(2, 3, 84, 84)).shape == (2, 5)
    # 84 → 42 → 21 → 10 → 5 pixels: the head reads 5×5×32 features; 32,901 in all.
    assert _parameters(model) == 32901
    assert sum(isinstance(m, torch.nn.MaxPool2d) for m in model.modules()) == 4


def test_resnet12_shapes_and_count() -> None:
    model = resnet12(5)
    # Per block: three 3×3 convolutions, a 1×1 shortcut, four BatchNorms; 12.4M in all.
    widths, blocks, width_in = (64, 160, 320, 640), 0, 3
    for w in widths:
        blocks += width_in * w * 9 + 2 * w * w * 9 + width_in * w + 4 * 2 * w
        width_in = w
    assert _parameters(model) == blocks + 640 * 5 + 5 == 12427525
    small = resnet12(3, channels=1, image_size=20, widths=(4, 6, 8, 10))
    assert small(torch.zeros(2, 1, 20, 20)).shape == (2, 3)


def test_batch_norm_keeps_no_running_statistics() -> None:
    for model in (conv4(5), conv4(5, pool=True), resnet12(5, widths=(4, 4, 4, 4))):
        assert not list(model.buffers())


def test_build_image_model_defaults() -> None:
    rgb = build_image_model("conv4", 5, image_size=84, channels=3)
    assert _parameters(rgb) == _parameters(
        conv4(5, filters=32, image_size=84, channels=3, pool=True)
    )
    grey = build_image_model("conv4", 5, image_size=28, channels=1)
    assert _parameters(grey) == _parameters(conv4(5))
    small_rgb = build_image_model("conv4", 5, image_size=32, channels=3, filters=16)
    assert _parameters(small_rgb) == _parameters(conv4(5, filters=16, image_size=32, channels=3))
    wide = build_image_model("resnet12", 5, image_size=84, channels=3, filters=8)
    assert [m.out_channels for m in wide.modules() if isinstance(m, torch.nn.Conv2d)][::4] == [
        8, 20, 40, 80,
    ]  # fmt: skip
    with pytest.raises(ValueError, match="model must be one of conv4, resnet12; got 'vgg'"):
        build_image_model("vgg", 5, image_size=84, channels=3)
    with pytest.raises(ValueError, match="at least 16 pixels; got 12"):
        conv4(5, image_size=12, pool=True)


def _batch(channels: int, size: int, tasks: int = 3, ways: int = 3) -> TaskBatch:
    gen = torch.Generator().manual_seed(0)
    labels = torch.arange(ways).repeat(tasks, 1)
    return TaskBatch(
        support_x=torch.randn(
            tasks, ways, channels, size, size, generator=gen, dtype=torch.float64
        ),
        support_y=labels,
        query_x=torch.randn(
            tasks, 2 * ways, channels, size, size, generator=gen, dtype=torch.float64
        ),
        query_y=labels.repeat(1, 2),
        loss="ce",
    )


@pytest.mark.parametrize(
    "build, channels, size",
    [
        (lambda: conv4(3, filters=4), 1, 28),
        (lambda: conv4(3, filters=4, image_size=84, channels=3, pool=True), 3, 84),
        (lambda: resnet12(3, channels=3, image_size=20, widths=(4, 6, 8, 10)), 3, 20),
    ],
    ids=["conv4", "conv4-pool", "resnet12"],
)
@pytest.mark.parametrize("algo", ["maml", "fomaml", "metasgd"])
def test_loop_and_vmap_engines_agree(build, channels: int, size: int, algo: str) -> None:
    batch = _batch(channels, size)
    grads = {}
    for engine in ("loop", "vmap"):
        model = seeded(build, 0).double()
        options = {"inner_lr": 0.1, "inner_steps": 1, "engine": engine}
        if algo == "metasgd":
            learner = metaopt.MetaSGD(model, **options)
        else:
            learner = metaopt.MAML(model, first_order=algo == "fomaml", **options)
        learner.meta_backward(batch if engine == "vmap" else list(batch))
        grads[engine] = [p.grad.clone() for p in learner.meta_parameters()]
    assert any(g.abs().sum() > 0 for g in grads["loop"])
    for loop, vmap in zip(grads["loop"], grads["vmap"], strict=True):
        torch.testing.assert_close(vmap, loop)
