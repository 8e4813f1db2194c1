"""The checkpointed-unroll experiment of docs/performance.md (not an engine option: it missed).

Second-order MAML on the bench's sine batch (meta-batch 25, K = 10, MLP 1-40-40-1), the inner
loop of the vectorised engine, with ``torch.utils.checkpoint`` (non-reentrant) around segments of
``segment`` inner steps; prints the relative difference of the meta-gradient from the plain
unroll, and both peak memories and median times::

    python -m benchmarks.checkpoint_unroll --dtype float64 --steps 20 --segment 5
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.utils.checkpoint import checkpoint

from benchmarks.bench_sine import SineBatch, sine_mlp
from metaopt.engine import _Layout, batched_forward
from metaopt.tools.bench import peak_memory_bytes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--segment", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(1)
    dtype = getattr(torch, args.dtype)
    model = sine_mlp().to(dtype)
    batch = SineBatch(25, 10)
    for name in ("xs", "ys", "xq", "yq"):
        setattr(batch, name, getattr(batch, name).to(dtype))
    layout = _Layout(model)
    named = dict(model.named_parameters())

    def forward(flat: tuple[torch.Tensor, ...]):  # type: ignore[no-untyped-def]
        params = dict(zip(layout.trainable, flat, strict=True))
        return batched_forward(model, params, layout.shared, slots=layout.slots)

    def one_step(step: int, flat: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        losses = batch.support_losses(forward(flat), step)
        grads = torch.autograd.grad(losses.sum(), flat, create_graph=True)
        return tuple(p - 0.01 * g for p, g in zip(flat, grads, strict=True))

    def run(segment: int) -> torch.Tensor:
        model.zero_grad()
        flat = tuple(named[n].expand(25, *named[n].shape) for n in layout.trainable)
        start = 0
        while start < args.steps:
            count = min(segment, args.steps - start) if segment else args.steps - start

            def unroll(*flat: torch.Tensor, start: int = start, count: int = count):  # type: ignore[no-untyped-def]
                for step in range(start, start + count):
                    flat = one_step(step, flat)
                return flat

            flat = checkpoint(unroll, *flat, use_reentrant=False) if segment else unroll(*flat)
            start += count
        (batch.query_losses(forward(flat)).sum() / 25).backward()
        return torch.cat([p.grad.flatten() for p in model.parameters()])

    plain, checkpointed = run(0), run(args.segment)
    print(f"relative difference {float((checkpointed - plain).norm() / plain.norm()):.2g}")
    for segment in (0, args.segment):
        peak = peak_memory_bytes(lambda segment=segment: run(segment)) / 2**20
        times = []
        for _ in range(7):
            begin = time.perf_counter()
            run(segment)
            times.append(time.perf_counter() - begin)
        label = f"segments of {segment}" if segment else "plain unroll"
        print(f"{label}: peak {peak:.2f} MiB, median {sorted(times)[3] * 1e3:.1f} ms")


if __name__ == "__main__":
    main()
