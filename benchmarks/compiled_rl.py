"""What compiling gives the MAML-RL seed iteration (docs/performance.md, "MAML-RL").

The RL tasks sample with an explicit ``torch.Generator``, which dynamo does not trace, so the
compiled engine refuses them. This experiment compiles what lies between the samples instead,
around eager sampling, on the bench's ``mdp-maml-seed`` workload (40 tabular MDPs × 20
trajectories × 10 steps, second-order MAML, 1 inner SGD step at lr 0.1, the family's default
estimator, ``dice``: the A2C loss inside, DiCE's sampling term outside):

1. eager: sample the support trajectories of every task with θ;
2. compiled ``adapt``: θ'_b = θ − α ∇ L^s_b(θ) from those trajectories (values only);
3. eager: sample the query trajectories with θ'_b;
4. compiled ``meta``: ∇_θ Σ_b L^q_b(θ'_b(θ)), recomputing the inner step inside the graph
   (second order), on the trajectories of 1 and 3.

The losses are the batch's own (``support_objective`` / ``query_objective``), traced by dynamo;
the batch object goes into the compiled functions, but only its settings and scorer are read
there, never its generator. Implementations, in one process, 1 thread, round-robin, timed
with the creation of the meta-batch (as the bench does):

* ``metaopt-vmap``: the bench's row, ``MAML(engine="vmap").meta_backward`` (metrics not read);
* ``compiled-around-sampling``: steps 1 to 4;
* ``compiled-simulation-too``: the same with the simulation of the episodes compiled as well
  (its random numbers drawn eagerly from the batch's generator first, then ``simulate``, a
  deterministic function of policy, tasks and noise, compiled);
* ``sampling-only``: steps 1 and 3 alone (eager), what compiling around sampling cannot touch;
* ``meta-batch-only``: drawing the 40 MDPs (``sample_tasks``), part of every row above.

The meta-gradients of the first two are compared first (same noise, so the same trajectories)::

    python -m benchmarks.compiled_rl [--rounds 30] [--backend inductor]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from metaopt.engine import _Layout, batched_forward, static_layout
from metaopt.tools.bench import Gradient, clear_grads, gradients_of, relative_difference
from metaopt.tools.bench.timing import round_robin
from metaopt.training import resolve_config
from metaopt.training.build import build_algorithm
from rl.estimators import sampling_record
from rl.tabular.family import MDPFamily

Tensors = tuple[torch.Tensor, ...]


def setup() -> tuple[MDPFamily, Any, Any]:
    family = MDPFamily()
    config = resolve_config(family, {"algo": "maml", "meta_batch": 40, "trajectories": 20})
    torch.manual_seed(0)
    return family, config, build_algorithm(config, family.make_model(config))


def vmap_engine() -> Callable[[], Gradient]:
    family, config, algo = setup()
    algo.engine = "vmap"
    params = algo.meta_parameters()

    def run() -> Gradient:
        clear_grads(params)
        batch = family.sample_tasks(config, np.random.default_rng(0), config.meta_batch)
        algo.meta_backward(batch)
        return gradients_of(params)

    return run


def around_sampling(
    backend: str, sampling_only: bool = False, compile_simulation: bool = False
) -> Callable[[], Gradient]:
    family, config, algo = setup()
    model, lr = algo.model, algo.inner_lr
    layout = static_layout(model, "running", "this experiment", "engine='vmap'")
    names = layout.trainable
    shared = {n: t.detach() for n, t in _Layout(model).shared.items()}
    params = algo.meta_parameters()

    def forward(flat: Tensors) -> Any:
        return batched_forward(
            model, dict(zip(names, flat, strict=True)), shared, slots=layout.slots
        )

    def adapt(theta: Tensors, support: Any, batch: Any) -> Tensors:
        flat = tuple(p.expand(len(batch), *p.shape) for p in theta)

        def loss(flat: Tensors) -> torch.Tensor:
            return batch.support_objective(forward(flat), support, per_task=True).sum()

        grads = torch.func.grad(loss)(flat)
        return tuple(p + g.mul(-lr) for p, g in zip(flat, grads, strict=True))

    def meta(theta: Tensors, support: Any, query: Any, batch: Any) -> Tensors:
        def outer(theta: Tensors) -> torch.Tensor:
            adapted = adapt(theta, support, batch)
            records = None
            if batch.settings.meta_gradient == "dice":  # the support sample's score, as the batch
                at_theta = tuple(p.expand(len(batch), *p.shape) for p in theta)
                records = [sampling_record(forward(at_theta), support, batch.scorer)]
            return batch.query_objective(forward(adapted), query, records, per_task=True).sum()

        return tuple(torch.func.grad(outer)(theta))

    def detached(theta: Tensors, support: Any, batch: Any) -> Tensors:
        return tuple(p.detach() for p in adapt(theta, support, batch))

    def simulate(flat: Tensors, batch: Any, noise: Any) -> Any:
        return batch.simulate(forward(flat), noise)

    compiled_simulate = torch.compile(simulate, backend=backend, dynamic=False)

    def sample(flat: Tensors, batch: Any, phase: str) -> Any:
        if not compile_simulation:
            return batch.sample(forward(flat), phase)
        if phase == "support0":
            batch.pre_entropy = batch.mean_entropy(forward(flat))  # as batch.sample does
        return compiled_simulate(flat, batch, batch.noise(phase))  # the noise drawn eagerly

    compiled_adapt = torch.compile(detached, backend=backend, dynamic=False, fullgraph=True)
    compiled_meta = torch.compile(meta, backend=backend, dynamic=False, fullgraph=True)

    def run() -> Gradient:
        clear_grads(params)
        batch = family.sample_tasks(config, np.random.default_rng(0), config.meta_batch)
        theta = tuple(p.detach() for p in params)
        at_theta = tuple(p.expand(len(batch), *p.shape) for p in theta)
        support = sample(at_theta, batch, "support0")
        adapted = at_theta if sampling_only else compiled_adapt(theta, support, batch)
        query = sample(adapted, batch, "query0")
        if sampling_only:
            return [torch.zeros_like(p) for p in params]
        for p, g in zip(params, compiled_meta(theta, support, query, batch), strict=True):
            p.grad = g / len(batch)
        return gradients_of(params)

    return run


def main() -> None:
    torch.set_num_threads(1)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default="inductor")
    parser.add_argument("--rounds", type=int, default=30)
    args, (family, config, _) = parser.parse_args(), setup()
    impls = {
        "metaopt-vmap": vmap_engine(),
        "compiled-around-sampling": around_sampling(args.backend),
        "compiled-simulation-too": around_sampling(args.backend, compile_simulation=True),
        "sampling-only": around_sampling(args.backend, sampling_only=True),
        "meta-batch-only": lambda: family.sample_tasks(
            config, np.random.default_rng(0), config.meta_batch
        ),
    }
    reference = impls["metaopt-vmap"]()
    for name in ("compiled-around-sampling", "compiled-simulation-too"):
        start = time.perf_counter()
        difference = relative_difference(impls[name](), reference)
        print(
            f"{name}: first call (compiles) {time.perf_counter() - start:.1f} s, "
            f"meta-gradient relative difference {difference:.1e}"
        )
        assert difference <= 1e-5, difference
    for fn in impls.values():  # warm-up
        fn()
    with open("/proc/loadavg") as load:
        before = load.read().split()[0]
    samples = round_robin(impls, args.rounds)
    with open("/proc/loadavg") as load:
        after = load.read().split()[0]
    print(
        f"1 thread, {args.rounds} rounds, torch {torch.__version__}, "
        f"load average {before} before, {after} after"
    )
    base_min = min(samples["metaopt-vmap"])
    base_median = statistics.median(samples["metaopt-vmap"])
    for name, times in samples.items():
        low, middle = min(times), statistics.median(times)
        print(
            f"  {name:26s} min {low * 1e3:7.2f} ms (× {base_min / low:4.2f} vmap)"
            f"  median {middle * 1e3:7.2f} ms (× {base_median / middle:4.2f})"
        )


if __name__ == "__main__":
    main()
