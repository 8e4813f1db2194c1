"""How far ``--precision bf16`` / ``fp16`` moves the meta-gradient: ``python -m benchmarks.precision_error``.

Second-order MAML and Meta-SGD, two inner steps at rate 0.4, on conv4 with 16 filters (28×28,
5-way 1-shot, 5 queries a class, 4 tasks from noisy class prototypes), on the CPU: the
meta-gradient computed under ``torch.autocast`` to bf16 and to fp16, and in float32, against the
same in float64, on the vectorised and the loop engine, for three seeds. Prints the cosine and
the relative L2 error of the whole flattened meta-gradient; docs/performance.md ("Devices and
precision") quotes it and tests/test_device.py bounds it.
"""

from __future__ import annotations

import copy
from typing import Any

import torch

from metaopt import MAML, MetaSGD
from supervised.batch import TaskBatch
from supervised.models import conv4

__all__ = ["episodes", "meta_gradient"]


def episodes(seed: int, dtype: torch.dtype) -> TaskBatch:
    """4 tasks of 5-way 1-shot, 5 queries a class, from noisy 28×28 class prototypes."""
    g = torch.Generator().manual_seed(seed)
    tasks, ways, query = 4, 5, 5
    proto = torch.randn(tasks, ways, 1, 1, 28, 28, generator=g)
    support = proto + 0.5 * torch.randn(tasks, ways, 1, 1, 28, 28, generator=g)
    queries = proto + 0.5 * torch.randn(tasks, ways, query, 1, 28, 28, generator=g)
    labels = torch.arange(ways).expand(tasks, -1)
    return TaskBatch(
        support.flatten(1, 2).to(dtype),
        labels,
        queries.flatten(1, 2).to(dtype),
        labels.repeat_interleave(query, dim=1),
        loss="ce",
    )


def meta_gradient(
    learner: Any, model: torch.nn.Module, batch: TaskBatch, dtype: Any, engine: str = "vmap"
) -> torch.Tensor:
    """The flattened meta-gradient (float64) of ``learner`` around ``model`` on ``batch``, under
    autocast to ``dtype`` (``None``: none)."""
    algo = learner(model, inner_lr=0.4, inner_steps=2, engine=engine)
    with torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
        algo.meta_backward(batch, scale=1 / len(batch))
    return torch.cat([p.grad.flatten().double() for p in algo.meta_parameters()])


def main() -> None:
    torch.set_num_threads(1)
    print(f"{'learner':8s} {'engine':6s} {'precision':9s} {'cosine':>16s} {'relative error':>16s}")
    for learner in (MAML, MetaSGD):
        for engine in ("vmap", "loop"):
            rows: dict[str, list[tuple[float, float]]] = {"fp32": [], "bf16": [], "fp16": []}
            for seed in range(3):
                torch.manual_seed(seed)
                model = conv4(5, filters=16)
                exact_batch = episodes(seed, torch.float64)
                exact = meta_gradient(
                    learner, copy.deepcopy(model).double(), exact_batch, None, engine
                )
                for name, dtype in (
                    ("fp32", None),
                    ("bf16", torch.bfloat16),
                    ("fp16", torch.float16),
                ):
                    got = meta_gradient(
                        learner, copy.deepcopy(model), episodes(seed, torch.float32), dtype, engine
                    )
                    cosine = float(torch.nn.functional.cosine_similarity(got, exact, dim=0))
                    rows[name].append((cosine, float((got - exact).norm() / exact.norm())))
            for name, values in rows.items():
                cosines = [c for c, _ in values]
                errors = [e for _, e in values]
                print(
                    f"{learner.__name__:8s} {engine:6s} {name:9s} "
                    f"{min(cosines):7.4f}-{max(cosines):.4f} {min(errors):7.2e}-{max(errors):.2e}"
                )


if __name__ == "__main__":
    main()
