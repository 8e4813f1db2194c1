"""The ``images-conv4-5w1s`` cases of ``metaopt bench``: MAML's conv4 on 5-way 1-shot episodes of
the two image sizes the field reports, with the papers' 15 query images per class.

One meta-iteration of second-order MAML, 1 inner step, meta-batch 32, 5-way 1-shot with 15 query
images per class (the count of Finn et al., 2017 and of Ravi & Larochelle's protocol):

* ``images-conv4-5w1s/28px``: 28×28 greyscale, conv4 with 64 filters and strided convolutions
  (Omniglot's network), inner SGD at lr 0.4;
* ``images-conv4-5w1s/84px``: 84×84 RGB, conv4 with 32 filters and 2×2 max-pooling
  (mini-ImageNet's network), inner SGD at lr 0.01.

``metaopt bench --cases images-conv4-5w1s`` selects both; a run without ``--cases`` leaves them
out (``Case.on_request``: about 15 minutes at one thread, most of it the 84×84 sub-case). The
networks are those `supervised.models.build_image_model` gives the ``images`` family by
default. The images are random pixels (a seeded generator): the arithmetic of a meta-iteration
does not depend on what they show. Implementations, from the same initial parameters on the same
meta-batch: the compiled, vectorised and loop engines (the batched ones given the tasks `CHUNK`
at a time; ``metaopt bench --no-compiled`` leaves out the compiled row and its compile of
minutes), and TorchOpt's example pattern (a loop over tasks with ``torchopt.MetaSGD``), the
reference. The rows report achieved FLOP/s and its share of the
machine's measured matmul peak (``Case.flops_from``).

Registered as the ``images`` entry of the ``metaopt.benchmarks`` entry-point group. Quick mode
(``metaopt bench --quick``): meta-batch 2, 4 filters, 2 query images per class.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from benchmarks.bench_omniglot import lazy, torchopt_loop
from metaopt.algorithms import MAML
from metaopt.compiled import compile_record
from metaopt.tools.bench import Case, Gradient, clear_grads, gradients_of
from supervised.batch import TaskBatch
from supervised.models import build_image_model, seeded

__all__ = ["CASE", "SIZES", "cases", "meta_batch", "network", "torchopt_row"]

CASE = "images-conv4-5w1s"
WAYS, SHOTS, QUERY_SHOTS, META_BATCH = 5, 1, 15, 32
#: Tasks per call of the batched engines: all 32 at once are slower on this CPU, and at 84×84
#: hold every task's activations at once (docs/performance.md).
CHUNK = 4
QUICK = {"meta_batch": 2, "filters": 4, "query_shots": 2}

#: Largest relative difference of meta-gradients accepted (float32) at 28 px, as the Omniglot
#: cases' (BatchNorm over the 5 images of a 1-shot support set rounds differently per
#: implementation). At 84 px the implementations differ by up to ~2.3e-3 (docs/performance.md):
#: `Size.tolerance`.
TOLERANCE = 1e-3


@dataclass(frozen=True)
class Size:
    """One image size of the case: pixels, channels, the paper's inner learning rate, and the
    largest relative difference of float32 meta-gradients accepted."""

    pixels: int
    channels: int
    inner_lr: float
    tolerance: float


SIZES = (Size(28, 1, 0.4, TOLERANCE), Size(84, 3, 0.01, 5e-3))


@functools.cache
def meta_batch(size: Size, quick: bool) -> TaskBatch:
    """One meta-batch of random images (built on first use: listing the cases makes none)."""
    tasks = QUICK["meta_batch"] if quick else META_BATCH
    query_shots = QUICK["query_shots"] if quick else QUERY_SHOTS
    gen = torch.Generator().manual_seed(0)
    shape = (size.channels, size.pixels, size.pixels)

    def labels(per_class: int) -> torch.Tensor:
        return torch.arange(WAYS).repeat_interleave(per_class).repeat(tasks, 1)

    return TaskBatch(
        support_x=torch.rand(tasks, WAYS * SHOTS, *shape, generator=gen),
        support_y=labels(SHOTS),
        query_x=torch.rand(tasks, WAYS * query_shots, *shape, generator=gen),
        query_y=labels(query_shots),
        loss="ce",
    )


def network(size: Size, quick: bool) -> nn.Module:
    filters = QUICK["filters"] if quick else None
    build = functools.partial(
        build_image_model, "conv4", WAYS, filters=filters, image_size=size.pixels,
        channels=size.channels,
    )  # fmt: skip
    return seeded(build, 0)  # every implementation starts from the same parameters


@functools.cache
def _algo(size: Size, quick: bool, engine: str, chunk: int | None) -> MAML:
    """One learner per row (a compiled engine compiles for one chunk size)."""
    return MAML(network(size, quick), size.inner_lr, 1, engine=engine)


def chunks(batch: TaskBatch, size: int) -> list[TaskBatch]:
    """``batch`` cut into meta-batches of ``size`` tasks (views; the last may be smaller)."""
    return [
        TaskBatch(
            batch.support_x[i : i + size],
            batch.support_y[i : i + size],
            batch.query_x[i : i + size],
            batch.query_y[i : i + size],
            batch.loss,
        )
        for i in range(0, batch.num_tasks, size)
    ]


def _metaopt(size: Size, quick: bool, engine: str, chunk: int | None) -> Callable[[], Gradient]:
    """metaopt's ``engine``; the batched engines take the tasks ``chunk`` at a time (``None``: all
    at once), each chunk's share weighted ``1 / B`` as a sharded meta-batch's."""
    batch = meta_batch(size, quick)
    algo = _algo(size, quick, engine, chunk)
    params = algo.meta_parameters()
    parts = [list(batch)] if engine == "loop" else chunks(batch, chunk or batch.num_tasks)

    def run() -> Gradient:
        clear_grads(params)
        for part in parts:
            algo.meta_backward(part, scale=1 / batch.num_tasks)
        return gradients_of(params)

    return run


def _channels_last(x: torch.Tensor) -> torch.Tensor:
    """Stacked images ``[B, N, C, H, W]`` stored channels-last (each task's view keeps it)."""
    return x.flatten(0, 1).contiguous(memory_format=torch.channels_last).view(x.shape)


def torchopt_row(size: Size, quick: bool, channels_last: bool = False) -> Callable[[], Gradient]:
    """TorchOpt's example pattern: one task at a time, a MetaSGD step, state extracted/recovered
    (``channels_last``: the weights and images in that memory format, docs/performance.md)."""
    batch = meta_batch(size, quick)
    model = network(size, quick)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        batch = dataclasses.replace(
            batch, support_x=_channels_last(batch.support_x), query_x=_channels_last(batch.query_x)
        )
    return torchopt_loop(model, batch, size.inner_lr, 1)


def cases(quick: bool) -> list[Case]:
    """``images-conv4-5w1s/28px`` and ``images-conv4-5w1s/84px``."""
    meta_batch = QUICK["meta_batch"] if quick else META_BATCH
    query_shots = QUICK["query_shots"] if quick else QUERY_SHOTS
    found = []
    for size in SIZES:
        model = network(size, quick)
        filters = next(m for m in model.modules() if isinstance(m, nn.Conv2d)).out_channels
        pooled = any(isinstance(m, nn.MaxPool2d) for m in model.modules())
        colour = "RGB" if size.channels == 3 else "greyscale"
        impls = {
            "metaopt-compiled": lazy(functools.partial(_metaopt, size, quick, "compiled", CHUNK)),
            "metaopt-vmap": lazy(functools.partial(_metaopt, size, quick, "vmap", CHUNK)),
            "metaopt-loop": lazy(functools.partial(_metaopt, size, quick, "loop", None)),
            "torchopt-loop": lazy(functools.partial(torchopt_row, size, quick)),
        }
        found.append(
            Case(
                f"{CASE}/{size.pixels}px",
                impls,
                reference="torchopt-loop",
                tolerance=size.tolerance,
                description=f"second-order MAML, {WAYS}-way {SHOTS}-shot ({query_shots} query per "
                f"class, random pixels), meta-batch {meta_batch}, 1 inner step at lr "
                f"{size.inner_lr:g}, conv4 ({filters} filters, "
                f"{'max-pooling' if pooled else 'strided'}) on {size.pixels}×{size.pixels} {colour}",
                ratios_to=("torchopt-loop",),
                max_repeats=None if quick else 3,
                on_request=True,
                flops_from="metaopt-vmap",
                compiled={
                    "metaopt-compiled": lambda size=size: compile_record(
                        _algo(size, quick, "compiled", CHUNK)
                    )
                },
            )
        )
    return found
