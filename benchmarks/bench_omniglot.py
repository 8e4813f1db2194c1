"""The Omniglot cases of ``metaopt bench``: MAML's 5-way 1-shot conv4 setting, 1 and 5 inner steps.

One meta-iteration of second-order MAML in the Omniglot family's defaults (Finn et al., 2017):
5-way 1-shot with 5 query images per class, meta-batch 32, conv4 with 64 filters on 28×28
images, inner SGD at lr 0.4. The vectorised engine against the loop engine and against the TorchOpt
examples' pattern (per task, ``torchopt.MetaSGD`` steps between ``extract_state_dict`` and
``recover_state_dict``), all three from the same initial parameters on the same meta-batch.

The real data set cannot be fetched here, so the images are the synthetic drawings of
``supervised.omniglot.data.make_fixture`` (random pen strokes per character), read back through the
family's own loader and episode sampler: the same shapes and arithmetic as the real set. The cases
report achieved FLOP/s against the machine's matmul peak (``Case.flops_from``); conv4 is
compute-bound on a CPU, so the ratios between the implementations are what they are there.

Registered as the ``omniglot`` entry of the ``metaopt.benchmarks`` entry-point group. Quick mode
(``metaopt bench --quick``): meta-batch 2, 8 filters.
"""

from __future__ import annotations

import functools
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torchopt
from torch import nn

from metaopt.algorithms import MAML
from metaopt.tools.bench import Case, Gradient, clear_grads, gradients_of
from metaopt.training.config import resolve_config
from supervised.batch import TaskBatch, task_loss
from supervised.omniglot.data import OmniglotConfig, make_fixture
from supervised.omniglot.family import OmniglotFamily

__all__ = ["cases", "lazy", "torchopt_loop"]

#: The synthetic folder: 4 alphabets × 5 characters × 20 drawings, of which 12 characters train.
FIXTURE = {"alphabets": 4, "characters": 5, "drawers": 20, "seed": 0}
SPLIT = {"train_classes": 12, "val_classes": 3}
QUICK = {"meta_batch": 2, "filters": 8}

#: Largest relative difference of meta-gradients accepted (float32). Against a float64 run of the
#: same meta-iteration, every float32 implementation is off by up to ~4e-4 relative: one task of the
#: 32 (a BatchNorm over 5 support images that is nearly degenerate) carries a float32 error of
#: ~2e-3 on its own, and the implementations round it differently (docs/performance.md).
TOLERANCE = 1e-3


def _workload(quick: bool) -> tuple[OmniglotFamily, OmniglotConfig, TaskBatch]:
    """The family, its default configuration and one training meta-batch, on the bench's device
    (``metaopt bench --device``: torch's default device while the cases are built)."""
    return _workload_on(quick, str(torch.get_default_device()))


@functools.cache
def _workload_on(quick: bool, device: str) -> tuple[OmniglotFamily, OmniglotConfig, TaskBatch]:
    """`_workload` on ``device`` (built on first use)."""
    family = OmniglotFamily()
    with tempfile.TemporaryDirectory(prefix="metaopt-bench-omniglot-") as tmp:
        root = make_fixture(Path(tmp) / "omniglot", **FIXTURE)
        overrides = {"data_dir": str(root), "device": device, **SPLIT, **(QUICK if quick else {})}
        config = resolve_config(family, overrides)
        assert isinstance(config, OmniglotConfig)
        # The family reads the images once; the batch holds them after the folder is gone.
        batch = family.sample_tasks(config, np.random.default_rng(0), config.meta_batch)
    return family, config, batch


def _model(quick: bool) -> nn.Module:
    family, config, _ = _workload(quick)
    return family.make_model(config)  # seeded by config.seed: every implementation starts equal


def lazy(build: Callable[[], Callable[[], Gradient]]) -> Callable[[], Gradient]:
    """Build an implementation on its first call: listing the cases must not load the images."""
    built: list[Callable[[], Gradient]] = []

    def run() -> Gradient:
        if not built:
            built.append(build())
        return built[0]()

    return run


def _metaopt(quick: bool, steps: int, engine: str) -> Callable[[], Gradient]:
    _, config, batch = _workload(quick)
    algo = MAML(_model(quick), config.inner_lr, steps, engine=engine)
    params = algo.meta_parameters()

    def run() -> Gradient:
        clear_grads(params)
        algo.meta_backward(batch if engine == "vmap" else list(batch))
        return gradients_of(params)

    return run


def _torchopt_loop(quick: bool, steps: int) -> Callable[[], Gradient]:
    """TorchOpt's example pattern on the Omniglot workload (`torchopt_loop`)."""
    _, config, batch = _workload(quick)
    return torchopt_loop(_model(quick), batch, config.inner_lr, steps)


def torchopt_loop(
    model: nn.Module, batch: TaskBatch, inner_lr: float, steps: int
) -> Callable[[], Gradient]:
    """TorchOpt's example pattern: one task at a time, ``steps`` MetaSGD steps at ``inner_lr``,
    the state extracted and recovered around each task (the conv-net cases' reference row)."""
    inner = torchopt.MetaSGD(model, lr=inner_lr)
    params = list(model.parameters())

    def run() -> Gradient:
        clear_grads(params)
        model_state = torchopt.extract_state_dict(model)
        inner_state = torchopt.extract_state_dict(inner)
        for i in range(batch.num_tasks):
            for _ in range(steps):
                inner.step(task_loss(batch.loss, model(batch.support_x[i]), batch.support_y[i]))
            query = task_loss(batch.loss, model(batch.query_x[i]), batch.query_y[i])
            (query / batch.num_tasks).backward()
            torchopt.recover_state_dict(model, model_state)
            torchopt.recover_state_dict(inner, inner_state)
        return gradients_of(params)

    return run


def cases(quick: bool) -> list[Case]:
    """``omniglot-maml-1step`` and ``omniglot-maml-5step``."""
    defaults = OmniglotConfig()
    meta_batch = QUICK["meta_batch"] if quick else defaults.meta_batch
    filters = QUICK["filters"] if quick else defaults.filters
    found = []
    for steps in (1, 5):
        found.append(
            Case(
                f"omniglot-maml-{steps}step",
                {
                    "metaopt-vmap": lazy(functools.partial(_metaopt, quick, steps, "vmap")),
                    "metaopt-loop": lazy(functools.partial(_metaopt, quick, steps, "loop")),
                    "torchopt-loop": lazy(functools.partial(_torchopt_loop, quick, steps)),
                },
                reference="torchopt-loop",
                tolerance=TOLERANCE,
                description=f"second-order MAML, Omniglot {defaults.ways}-way {defaults.shots}-shot "
                f"({defaults.query_shots} query per class, synthetic drawings), meta-batch "
                f"{meta_batch}, {steps} inner step(s) at lr {defaults.inner_lr:g}, conv4 "
                f"({filters} filters) on {defaults.image_size}×{defaults.image_size}",
                ratios_to=("metaopt-loop", "torchopt-loop"),
                max_repeats=None if quick else 5,
                flops_from="metaopt-vmap",
            )
        )
    return found
