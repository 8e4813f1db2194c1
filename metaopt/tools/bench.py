"""``metaopt bench``: metaopt's engines against the ways people write meta-learning by hand.

Every case times several implementations of *one* meta-iteration on the same data and the same
initial parameters, in one process, after a warm-up, round-robin over the implementations so
that machine noise falls on all of them alike, and reports medians. Before any time is printed
it checks that all implementations computed the same meta-gradient.

Baselines:

* ``torchopt-loop``: the pattern of TorchOpt's examples and the seed documents, one task at a time
  with ``torchopt.MetaSGD`` and ``extract_state_dict`` / ``recover_state_dict``;
* ``higher``: ``higher.innerloop_ctx`` (when installed), ``copy_initial_weights=False``;
* ``torch.func``: a hand-written ``functional_call`` + ``grad`` inner loop, ``vmap`` over tasks;
* ``deepcopy-loop`` (Reptile): the Reptile seed's serial loop, ``deepcopy`` of the state dict,
  manual SGD, interpolation.

Domains add cases through the entry-point group ``metaopt.benchmarks`` (a function
``cases(quick: bool) -> list[Case]``), so the reinforcement-learning case lives in ``rl/`` and the
Omniglot cases in ``supervised/``.

A case that names ``flops_from`` also reports achieved FLOP/s: the meta-iteration's floating-point
operations are counted once with ``torch.utils.flop_counter.FlopCounterMode`` (:func:`count_flops`),
divided by each implementation's median time, and set against the machine's float32 matmul peak
(:func:`matmul_peak`), measured in the same run at the same thread count.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import torch
import torchopt
from torch import nn
from torch.func import functional_call, grad, vmap

from metaopt.algorithms import MAML, MetaLearner, MetaSGD, Reptile

__all__ = [
    "Case",
    "SineBatch",
    "count_flops",
    "matmul_peak",
    "memory_sweep",
    "peak_memory_bytes",
    "run_bench",
    "sine_cases",
]

Gradient = list[torch.Tensor]


@dataclass
class Case:
    """One workload and the implementations that compute its meta-gradient.

    Attributes:
        name: Short identifier, e.g. ``sine-maml-1step``.
        impls: Implementation name -> zero-argument function running one meta-iteration and
            returning the meta-gradient (a list of tensors in a fixed order).
        reference: The implementation others are compared with.
        tolerance: Largest relative difference of meta-gradients accepted as "the same".
        description: What the case measures.
        ratios_to: Implementations the speed-ups are stated against.
        stochastic: Implementations that sample their own random numbers (an RL loop stepping
            its own environments): timed, but their meta-gradient cannot be compared.
        max_repeats: Fewer repetitions for a case whose baseline takes seconds.
        flops_from: The implementation whose meta-iteration :func:`count_flops` counts once; the
            count stands for every implementation (they do the same arithmetic), and the bench
            reports achieved FLOP/s and its fraction of the measured matmul peak. ``None``: no
            FLOP figures.
    """

    name: str
    impls: dict[str, Callable[[], Gradient]]
    reference: str
    tolerance: float = 1e-4
    description: str = ""
    ratios_to: tuple[str, ...] = field(default_factory=tuple)
    stochastic: tuple[str, ...] = field(default_factory=tuple)
    max_repeats: int | None = None
    flops_from: str | None = None


# --------------------------------------------------------------------------- the sine workload


class _SineTask:
    def __init__(self, batch: SineBatch, index: int) -> None:
        self.batch, self.index = batch, index
        self.step = 0

    def support_loss(self, model: nn.Module) -> torch.Tensor:
        x, y = self.batch.support(self.index, self.step if torch.is_grad_enabled() else None)
        if torch.is_grad_enabled():
            self.step += 1
        return ((model(x) - y) ** 2).mean()

    def query_loss(self, model: nn.Module) -> torch.Tensor:
        return ((model(self.batch.xq[self.index]) - self.batch.yq[self.index]) ** 2).mean()


class SineBatch(list[_SineTask]):
    """Sine regression y = A·sin(x + φ), stacked (the benchmark's own data; no domain import).

    With ``minibatch`` set, inner step k uses the k-th minibatch of a per-task permutation of the
    support points (the Reptile seed's one epoch of minibatches).
    """

    def __init__(
        self, num_tasks: int, shots: int, *, seed: int = 0, minibatch: int | None = None
    ) -> None:
        g = torch.Generator().manual_seed(seed)
        amplitude = 0.1 + 4.9 * torch.rand(num_tasks, 1, 1, generator=g)
        phase = math.pi * torch.rand(num_tasks, 1, 1, generator=g)
        x = 10 * torch.rand(num_tasks, 2, shots, 1, generator=g) - 5
        y = amplitude.unsqueeze(1) * torch.sin(x + phase.unsqueeze(1))
        self.xs, self.xq, self.ys, self.yq = x[:, 0], x[:, 1], y[:, 0], y[:, 1]
        self.minibatch = minibatch
        self.order = torch.stack([torch.randperm(shots, generator=g) for _ in range(num_tasks)])
        super().__init__(_SineTask(self, i) for i in range(num_tasks))

    def rows(self, step: int) -> torch.Tensor:
        size = self.minibatch or self.xs.shape[1]
        count = -(-self.xs.shape[1] // size)
        start = (step % count) * size
        return self.order[:, start : start + size]

    def support(self, index: int, step: int | None) -> tuple[torch.Tensor, torch.Tensor]:
        if step is None or self.minibatch is None:
            return self.xs[index], self.ys[index]
        rows = self.rows(step)[index]
        return self.xs[index, rows], self.ys[index, rows]

    def support_losses(self, forward: Any, step: int | None) -> torch.Tensor:
        if step is None or self.minibatch is None:
            x, y = self.xs, self.ys
        else:
            rows = self.rows(step).unsqueeze(-1)
            x, y = self.xs.gather(1, rows), self.ys.gather(1, rows)
        return ((forward(x) - y) ** 2).mean(dim=(1, 2))

    def query_losses(self, forward: Any) -> torch.Tensor:
        return ((forward(self.xq) - self.yq) ** 2).mean(dim=(1, 2))

    def reset(self) -> SineBatch:
        for task in self:
            task.step = 0
        return self


def sine_mlp(hidden: int = 40, activation: type[nn.Module] = nn.ReLU, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(1, hidden),
        activation(),
        nn.Linear(hidden, hidden),
        activation(),
        nn.Linear(hidden, 1),
    )


def _grads(params: Sequence[torch.Tensor]) -> Gradient:
    return [p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p) for p in params]


def _zero(params: Sequence[torch.Tensor]) -> None:
    for p in params:
        p.grad = None


# --------------------------------------------------------------------------- implementations


def _metaopt(algo: MetaLearner, batch: SineBatch, as_list: bool = False) -> Callable[[], Gradient]:
    params = algo.meta_parameters()

    def run() -> Gradient:
        _zero(params)
        algo.meta_backward(list(batch.reset()) if as_list else batch.reset())
        return _grads(params)

    return run


def _torchopt_loop(
    model: nn.Module, batch: SineBatch, steps: int, impl: torchopt.base.GradientTransformation
) -> Callable[[], Gradient]:
    inner = torchopt.MetaOptimizer(model, impl)
    params = list(model.parameters())

    def run() -> Gradient:
        _zero(params)
        model_state = torchopt.extract_state_dict(model)
        inner_state = torchopt.extract_state_dict(inner)
        for i, task in enumerate(batch.reset()):
            for _ in range(steps):
                x, y = batch.support(i, task.step)
                task.step += 1
                inner.step(((model(x) - y) ** 2).mean())
            (task.query_loss(model) / len(batch)).backward()
            torchopt.recover_state_dict(model, model_state)
            torchopt.recover_state_dict(inner, inner_state)
        return _grads(params)

    return run


def _higher_loop(
    model: nn.Module, batch: SineBatch, steps: int, lr: float
) -> Callable[[], Gradient] | None:
    try:
        import higher
    except ImportError:
        return None
    params = list(model.parameters())
    optimizer = torch.optim.SGD(params, lr=lr)

    def run() -> Gradient:
        _zero(params)
        for i, task in enumerate(batch.reset()):
            with higher.innerloop_ctx(model, optimizer, copy_initial_weights=False) as (
                fmodel,
                diffopt,
            ):
                for _ in range(steps):
                    x, y = batch.support(i, task.step)
                    task.step += 1
                    diffopt.step(((fmodel(x) - y) ** 2).mean())
                (task.query_loss(fmodel) / len(batch)).backward()
        return _grads(params)

    return run


def _func_reference(
    model: nn.Module,
    batch: SineBatch,
    steps: int,
    lr: float,
    rates: Sequence[torch.Tensor] | None = None,
) -> Callable[[], Gradient]:
    """Hand-written torch.func: functional_call + grad per task, vmap over the tasks."""
    names = [name for name, _ in model.named_parameters()]
    params = list(model.parameters())
    meta = params + list(rates or [])

    def loss(p: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return ((functional_call(model, p, (x,)) - y) ** 2).mean()

    def task_loss(
        p: dict[str, torch.Tensor],
        r: dict[str, torch.Tensor],
        xs: torch.Tensor,
        ys: torch.Tensor,
        xq: torch.Tensor,
        yq: torch.Tensor,
    ) -> torch.Tensor:
        for _ in range(steps):
            g = grad(loss)(p, xs, ys)
            p = {k: p[k] - r[k] * g[k] for k in p}
        return loss(p, xq, yq)

    def run() -> Gradient:
        _zero(meta)
        p: dict[str, torch.Tensor] = dict(zip(names, params, strict=True))
        r = (
            dict(zip(names, rates, strict=True))
            if rates is not None
            else {k: torch.tensor(lr) for k in names}
        )
        losses = vmap(task_loss, in_dims=(None, None, 0, 0, 0, 0))(
            p, r, batch.xs, batch.ys, batch.xq, batch.yq
        )
        losses.mean().backward()
        return _grads(meta)

    return run


def _reptile_deepcopy(
    model: nn.Module, batch: SineBatch, steps: int, lr: float
) -> Callable[[], Gradient]:
    """The Reptile seed's serial loop: deepcopy, manual SGD on minibatches, θ − θ̃ averaged."""
    params = list(model.parameters())

    def run() -> Gradient:
        before = copy.deepcopy(model.state_dict())
        total = [torch.zeros_like(p) for p in params]
        for i in range(len(batch)):
            for step in range(steps):
                x, y = batch.support(i, step)
                model.zero_grad()
                ((model(x) - y) ** 2).mean().backward()
                for p in params:
                    assert p.grad is not None
                    p.data -= lr * p.grad.data
            for t, p, name in zip(
                total, params, [n for n, _ in model.named_parameters()], strict=True
            ):
                t += (before[name] - p.data) / len(batch)
            model.load_state_dict(before)
        return total

    return run


def _reptile_func(
    model: nn.Module, batch: SineBatch, steps: int, lr: float
) -> Callable[[], Gradient]:
    names = [name for name, _ in model.named_parameters()]
    params = list(model.parameters())

    def loss(p: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return ((functional_call(model, p, (x,)) - y) ** 2).mean()

    def adapt(
        p: dict[str, torch.Tensor], xs: torch.Tensor, ys: torch.Tensor, order: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        size = batch.minibatch or xs.shape[0]
        for step in range(steps):
            count = -(-xs.shape[0] // size)
            rows = order[(step % count) * size : (step % count) * size + size]
            g = grad(loss)(p, xs[rows], ys[rows])
            p = {k: p[k] - lr * g[k] for k in p}
        return p

    def run() -> Gradient:
        with torch.no_grad():
            p = {k: v.detach() for k, v in zip(names, params, strict=True)}
            adapted = vmap(adapt, in_dims=(None, 0, 0, 0))(p, batch.xs, batch.ys, batch.order)
            return [(p[k] - adapted[k]).mean(0) for k in names]

    return run


def sine_cases(quick: bool = False) -> list[Case]:
    """The sine configurations of the issue: MAML at 1 and 5 steps, Meta-SGD, Reptile."""
    tasks, shots = (5, 5) if quick else (25, 10)
    cases = []
    for steps in (1, 5):
        batch = SineBatch(tasks, shots)
        impls: dict[str, Callable[[], Gradient]] = {
            "torch.func": _func_reference(sine_mlp(), batch, steps, 0.01),
            "metaopt-vmap": _metaopt(MAML(sine_mlp(), 0.01, steps, engine="vmap"), batch),
            "metaopt-loop": _metaopt(
                MAML(sine_mlp(), 0.01, steps, engine="loop"), batch, as_list=True
            ),
            "torchopt-loop": _torchopt_loop(sine_mlp(), batch, steps, torchopt.sgd(0.01)),
        }
        higher_impl = _higher_loop(sine_mlp(), batch, steps, 0.01)
        if higher_impl is not None:
            impls["higher"] = higher_impl
        cases.append(
            Case(
                f"sine-maml-{steps}step",
                impls,
                reference="torch.func",
                description=f"second-order MAML, meta-batch {tasks}, K={shots}, {steps} inner step(s), MLP 1-40-40-1",
                ratios_to=("torchopt-loop", "torch.func"),
            )
        )
    batch = SineBatch(tasks, shots)
    vmap_algo = MetaSGD(sine_mlp(), 0.01, 1, engine="vmap")
    loop_algo = MetaSGD(sine_mlp(), 0.01, 1, engine="loop")
    rates = list(MetaSGD(sine_mlp(), 0.01).inner_lrs)
    baseline_model = sine_mlp()
    learned = MetaSGD(baseline_model, 0.01)  # its rates, handed to a plain TorchOpt loop
    cases.append(
        Case(
            "sine-metasgd-1step",
            {
                "torch.func": _func_reference(sine_mlp(), batch, 1, 0.01, rates=rates),
                "metaopt-vmap": _metaopt(vmap_algo, batch),
                "metaopt-loop": _metaopt(loop_algo, batch, as_list=True),
                "torchopt-loop": _with_rates(baseline_model, learned, batch),
            },
            reference="torch.func",
            description=f"Meta-SGD (θ and α), meta-batch {tasks}, K={shots}, 1 inner step",
            ratios_to=("torchopt-loop", "torch.func"),
        )
    )
    grid = 10 if quick else 50
    batch = SineBatch(tasks, grid, minibatch=grid // 5)
    cases.append(
        Case(
            "sine-reptile-5step",
            {
                "torch.func": _reptile_func(sine_mlp(64, nn.Tanh), batch, 5, 0.02),
                "metaopt-vmap": _metaopt(
                    Reptile(sine_mlp(64, nn.Tanh), 0.02, 5, engine="vmap"), batch
                ),
                "metaopt-loop": _metaopt(
                    Reptile(sine_mlp(64, nn.Tanh), 0.02, 5, engine="loop"), batch, as_list=True
                ),
                "deepcopy-loop": _reptile_deepcopy(sine_mlp(64, nn.Tanh), batch, 5, 0.02),
            },
            reference="deepcopy-loop",
            description=f"Reptile, meta-batch {tasks}, {grid} points in minibatches of {grid // 5} (5 inner SGD steps, lr 0.02), MLP 1-64-64-1 tanh",
            ratios_to=("deepcopy-loop", "torch.func"),
        )
    )
    return cases


def _with_rates(model: nn.Module, algo: MetaSGD, batch: SineBatch) -> Callable[[], Gradient]:
    """A plain TorchOpt extract/recover loop with Meta-SGD's per-parameter rates."""
    from metaopt.inner import learned_rate_sgd, torchopt_order

    run_loop = _torchopt_loop(
        model, batch, 1, learned_rate_sgd([algo.inner_lrs[i] for i in torchopt_order(model)])
    )
    meta = list(model.parameters()) + list(algo.inner_lrs)

    def run() -> Gradient:
        _zero(meta)
        run_loop()
        return _grads(meta)

    return run


# --------------------------------------------------------------------------- timing and memory


def _relative_difference(a: Gradient, b: Gradient) -> float:
    num = math.sqrt(sum(float(((x - y) ** 2).sum()) for x, y in zip(a, b, strict=True)))
    den = math.sqrt(sum(float((y**2).sum()) for y in b))
    return num / den if den else num


def time_case(
    case: Case, *, repeats: int, warmup: int, inner: int = 1
) -> dict[str, dict[str, Any]]:
    """Check agreement, then time each implementation; return name -> record fields."""
    results = {name: fn() for name, fn in case.impls.items()}
    reference = results[case.reference]
    records: dict[str, dict[str, Any]] = {}
    for name, gradient in results.items():
        if name in case.stochastic:
            records[name] = {"max_rel_grad_diff": None}
            continue
        difference = _relative_difference(gradient, reference)
        records[name] = {"max_rel_grad_diff": difference}
        if not difference <= case.tolerance:
            raise AssertionError(
                f"{case.name}: {name}'s meta-gradient differs from {case.reference}'s by "
                f"{difference:.3g} (relative), more than {case.tolerance:g}; timings not reported"
            )
    if case.flops_from is not None:
        flops = count_flops(case.impls[case.flops_from])
        for fields in records.values():
            fields["flops"] = flops
    for _ in range(warmup):
        for fn in case.impls.values():
            fn()
    samples: dict[str, list[float]] = {name: [] for name in case.impls}
    for _ in range(repeats):
        for name, fn in case.impls.items():  # round-robin: noise falls on every impl alike
            start = time.perf_counter()
            for _ in range(inner):
                fn()
            samples[name].append((time.perf_counter() - start) / inner)
    for name in case.impls:
        records[name]["median_s"] = statistics.median(samples[name])
    return records


def _conv_backward_flop(
    grad_out_shape: list[int],
    x_shape: list[int],
    w_shape: list[int],
    _bias: Any,
    _stride: Any,
    _padding: Any,
    _dilation: Any,
    transposed: bool,
    _output_padding: Any,
    _groups: int,
    output_mask: Sequence[bool],
    out_shape: Sequence[Any] | None = None,
    **kwargs: Any,
) -> int:
    """FLOPs of ``aten.convolution_backward``, a grouped convolution counted group by group.

    torch's own formula (2.13) counts the weight gradient of a grouped convolution ``groups`` times
    over (the transposed shapes it builds lose the group division). The
    vectorised engine runs the tasks' convolutions as one grouped convolution (one group per task),
    so its meta-iteration would count about meta-batch times the loop's. Each half of the backward
    (input gradient, weight gradient) costs the multiply-adds of the forward convolution.
    """
    from torch.utils.flop_counter import conv_flop_count

    assert out_shape is not None
    flops = 0
    if output_mask[0]:  # input gradient: the transposed convolution of grad_out with the weight
        flops += conv_flop_count(grad_out_shape, w_shape, list(out_shape[0]), not transposed)
    if output_mask[1]:  # weight gradient: as many multiply-adds as the forward convolution
        flops += conv_flop_count(x_shape, w_shape, grad_out_shape, transposed)
    return flops


def count_flops(fn: Callable[[], Any]) -> int:
    """Floating-point operations of one call of ``fn``, forward and backward passes included.

    Counted by ``torch.utils.flop_counter.FlopCounterMode``: matrix products and convolutions,
    2 per multiply-add (normalisation, activations and other element-wise work are not counted),
    with grouped convolutions' backward counted per group (:func:`_conv_backward_flop`), so that a
    vmapped meta-iteration counts what the task-by-task loop does.
    """
    from torch.utils.flop_counter import FlopCounterMode

    mapping = {torch.ops.aten.convolution_backward: _conv_backward_flop}
    with FlopCounterMode(display=False, custom_mapping=mapping) as counter:
        fn()
    return int(counter.get_total_flops())


def matmul_peak(*, target_s: float = 0.05, repeats: int = 10) -> dict[str, Any]:
    """The machine's float32 matrix-product rate at torch's current thread count.

    ``torch.mm`` of two n×n float32 matrices, n (a multiple of 128 from 256 to 4096) chosen from a
    512×512 probe so that one product takes about ``target_s``; the median of ``repeats`` products
    after a warm-up. Returns a record ``{"case": "matmul-peak", "impl": "torch.mm", "size",
    "flops", "time_s", "flop_per_s"}`` (2·n³ FLOPs per product).
    """
    generator = torch.Generator().manual_seed(0)

    def median_time(n: int, count: int) -> float:
        a = torch.randn(n, n, generator=generator)
        b = torch.randn(n, n, generator=generator)
        out = torch.mm(a, b)  # warm-up, and the output buffer
        samples = []
        for _ in range(count):
            start = time.perf_counter()
            torch.mm(a, b, out=out)
            samples.append(time.perf_counter() - start)
        return statistics.median(samples)

    probe = 512
    rate = 2 * probe**3 / median_time(probe, 3)
    n = min(4096, max(256, 128 * round((target_s * rate / 2) ** (1 / 3) / 128)))
    seconds = median_time(n, repeats)
    return {
        "case": "matmul-peak",
        "impl": "torch.mm",
        "size": n,
        "flops": 2 * n**3,
        "time_s": seconds,
        "flop_per_s": 2 * n**3 / seconds,
    }


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Silence file descriptor 2: the profiler's C++ layer logs every start and stop there."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def peak_memory_bytes(fn: Callable[[], Any]) -> int:
    """Peak bytes allocated by torch's CPU allocator while ``fn`` runs, above what was live before.

    Read from the profiler's allocation and free events (``profile_memory=True``): each operator's
    own allocations minus frees, and the profiler's separate free events, summed in time order.
    """
    from torch.profiler import ProfilerActivity, profile

    with _quiet_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    deltas = []
    for event in prof.events():
        delta = event.cpu_memory_usage if event.name == "[memory]" else event.self_cpu_memory_usage
        if delta:
            deltas.append((event.time_range.start, delta))
    deltas.sort(key=lambda item: item[0])
    live = peak = 0
    for _, delta in deltas:
        live += delta
        peak = max(peak, live)
    return peak


def memory_sweep(steps: Sequence[int], *, quick: bool = False) -> list[dict[str, Any]]:
    """Peak memory of one meta-iteration (vectorised engine) as inner steps grow."""
    tasks, shots = (5, 5) if quick else (25, 10)
    records = []
    for k in steps:
        batch = SineBatch(tasks, shots)
        for name, algo in (
            ("maml", MAML(sine_mlp(), 0.01, k)),
            ("fomaml", MAML(sine_mlp(), 0.01, k, first_order=True)),
            ("reptile", Reptile(sine_mlp(), 0.01, k)),
        ):
            run = _metaopt(algo, batch)
            run()  # warm-up: one-off allocations are not the iteration's
            records.append(
                {
                    "case": f"memory-sine-{name}",
                    "impl": "metaopt-vmap",
                    "inner_steps": k,
                    "peak_bytes": peak_memory_bytes(run),
                }
            )
    return records


def plot_memory(records: Sequence[dict[str, Any]], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    styles = {"maml": ("o", "-"), "fomaml": ("s", "--"), "reptile": ("^", ":")}
    for algo, (marker, line) in styles.items():
        rows = [r for r in records if r["case"] == f"memory-sine-{algo}"]
        steps = [r["inner_steps"] for r in rows]
        mib = [r["peak_bytes"] / 2**20 for r in rows]
        ax.plot(steps, mib, marker=marker, linestyle=line, label=algo)
    ax.set_xlabel("inner steps")
    ax.set_ylabel("peak memory of one meta-iteration (MiB)")
    ax.set_title("sine, meta-batch 25, K=10, vectorised engine")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def domain_cases(quick: bool) -> list[Case]:
    """Cases that installed domains register under the ``metaopt.benchmarks`` entry points."""
    found = []
    for ep in entry_points(group="metaopt.benchmarks"):
        found.extend(ep.load()(quick))
    return found


def run_bench(
    *,
    quick: bool = False,
    threads: int | None = None,
    repeats: int | None = None,
    cases: Sequence[str] | None = None,
    memory: bool = True,
    json_path: Path | None = None,
    plot_path: Path | None = None,
    echo: Callable[[str], None] = print,
) -> list[dict[str, Any]]:
    """Run the benchmark; print the table; return (and optionally save) the records."""
    if threads is not None:
        torch.set_num_threads(threads)
    threads = torch.get_num_threads()
    repeats = repeats or (3 if quick else 15)
    all_cases = sine_cases(quick) + domain_cases(quick)
    if cases:
        unknown = sorted(set(cases) - {c.name for c in all_cases})
        if unknown:
            from metaopt.training.family import ConfigError

            names = ", ".join(c.name for c in all_cases)
            raise ConfigError(f"--cases: unknown case(s) {', '.join(unknown)}; available: {names}")
        all_cases = [c for c in all_cases if c.name in cases]
    echo(
        f"metaopt bench: {threads} thread(s), median of {repeats} repetitions, torch {torch.__version__}"
    )
    records: list[dict[str, Any]] = []
    peak: float | None = None
    if any(case.flops_from is not None for case in all_cases):
        measured = matmul_peak(target_s=0.01 if quick else 0.05, repeats=3 if quick else 10)
        measured["threads"] = threads
        records.append(measured)
        peak = measured["flop_per_s"]
        size = measured["size"]
        echo(
            f"matmul peak: torch.mm {size}×{size} float32, {peak / 1e9:.1f} GFLOP/s "
            f"({measured['time_s'] * 1e3:.1f} ms, median of {3 if quick else 10})"
        )
    for case in all_cases:
        timed = time_case(
            case,
            repeats=min(repeats, case.max_repeats or repeats),
            warmup=1 if quick or case.max_repeats else 3,
        )
        echo(f"\n{case.name}: {case.description}")
        flops = timed[case.flops_from]["flops"] if case.flops_from is not None else None
        if flops is not None:
            echo(
                f"  {flops / 1e9:.2f} GFLOP per meta-iteration (FlopCounterMode, {case.flops_from})"
            )
        header = (
            f"  {'implementation':16s} {'median ms':>10s}"
            + "".join(f" {'× vs ' + r:>18s}" for r in case.ratios_to)
            + f" {'rel. grad diff':>15s}"
            + (f" {'GFLOP/s':>9s} {'% of peak':>10s}" if flops is not None else "")
        )
        echo(header)
        for name, fields in sorted(timed.items(), key=lambda item: item[1]["median_s"]):
            row = {"case": case.name, "impl": name, "threads": threads, **fields}
            ratios = {}
            for baseline in case.ratios_to:
                ratios[baseline] = timed[baseline]["median_s"] / fields["median_s"]
                row[f"speedup_vs_{baseline}"] = ratios[baseline]
            flop_columns = ""
            if flops is not None:
                assert peak is not None
                row["flop_per_s"] = flops / fields["median_s"]
                row["peak_fraction"] = row["flop_per_s"] / peak
                flop_columns = f" {row['flop_per_s'] / 1e9:9.2f} {row['peak_fraction'] * 100:10.1f}"
            records.append(row)
            diff = fields["max_rel_grad_diff"]
            echo(
                f"  {name:16s} {fields['median_s'] * 1e3:10.2f}"
                + "".join(f" {ratios[b]:18.2f}" for b in case.ratios_to)
                + (f" {diff:15.1e}" if diff is not None else f" {'(stochastic)':>15s}")
                + flop_columns
            )
    if memory:
        steps = (1, 2, 5) if quick else (1, 2, 5, 10, 20)
        sweep = memory_sweep(steps, quick=quick)
        echo("\npeak memory of one meta-iteration (MiB), sine, vectorised engine:")
        echo("  inner steps " + "".join(f"{k:>8d}" for k in steps))
        for algo in ("maml", "fomaml", "reptile"):
            values = [r["peak_bytes"] / 2**20 for r in sweep if r["case"] == f"memory-sine-{algo}"]
            echo(f"  {algo:11s} " + "".join(f"{v:8.2f}" for v in values))
        for row in sweep:
            row["threads"] = threads
        records.extend(sweep)
        if plot_path is not None:
            plot_memory(sweep, plot_path)
    if json_path is not None:
        Path(json_path).write_text(json.dumps(records, indent=2) + "\n")
    return records
