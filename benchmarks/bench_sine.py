"""The sine cases of ``metaopt bench``: MAML at 1 and 5 inner steps, Meta-SGD, Reptile.

Sine regression y = A·sin(x + φ) with A ~ U[0.1, 5], φ ~ U[0, π], x ~ U[-5, 5] (Finn et al., 2017),
stacked in tensors by the benchmark's own `SineBatch` rather than the ``sine`` family's
sampler: the bench draws its tasks from a ``torch.Generator`` and walks the Reptile demo's
minibatches in a fixed per-task permutation that every implementation (metaopt's engines, a
hand-written ``torch.func`` loop, TorchOpt's and ``higher``'s loops, the Reptile demo's ``deepcopy``
loop) can index alike, so the meta-gradients can be compared to 1e-4 and the timings stay those of
docs/performance.md.

Every case has a ``metaopt-compiled`` row: the same algorithm with ``engine="compiled"``, from
the same initial parameters on the same data. It compiles in the bench's agreement check (its
first call), and its compile time and whether inductor's cache was cold or warm go in their own
column (``Case.compiled``); ``metaopt bench --no-compiled`` leaves the rows out.

``sine-maml-20step-checkpointed`` times second-order MAML at 20 inner steps with checkpointed
unrolling (``unroll_checkpoints=CHECKPOINTS``, row ``metaopt-checkpointed``) against the plain
unroll (``metaopt-vmap``), the same meta-gradient.

Registered as the ``sine`` entry of the ``metaopt.benchmarks`` entry-point group; the
``sine-maml-1step`` case carries the peak-memory sweep (MAML, MAML with checkpointed unrolling,
first-order MAML, Reptile and iMAML at 1, 2, 5, 10, 20 inner steps, vectorised engine).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torchopt
from torch import nn
from torch.func import functional_call, grad, vmap

from metaopt.algorithms import IMAML, MAML, MetaLearner, MetaSGD, Reptile
from metaopt.compiled import compile_record
from metaopt.inner import learned_rate_sgd, torchopt_order
from metaopt.tools.bench import Case, Gradient, MemorySweep, clear_grads, gradients_of

__all__ = ["CHECKPOINTS", "SineBatch", "cases", "memory_sweep", "sine_mlp"]

#: ``unroll_checkpoints`` of the checkpointed rows: at 20 steps, the fewest recomputed steps that
#: keep the peak within 2× the plain unroll's at 1 step (docs/performance.md).
CHECKPOINTS = 5


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
    support points (the Reptile demo's one epoch of minibatches).
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


# --------------------------------------------------------------------------- implementations


def _metaopt(algo: MetaLearner, batch: SineBatch, as_list: bool = False) -> Callable[[], Gradient]:
    params = algo.meta_parameters()

    def run() -> Gradient:
        clear_grads(params)
        algo.meta_backward(list(batch.reset()) if as_list else batch.reset())
        return gradients_of(params)

    return run


def _torchopt_loop(
    model: nn.Module, batch: SineBatch, steps: int, impl: torchopt.base.GradientTransformation
) -> Callable[[], Gradient]:
    inner = torchopt.MetaOptimizer(model, impl)
    params = list(model.parameters())

    def run() -> Gradient:
        clear_grads(params)
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
        return gradients_of(params)

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
        clear_grads(params)
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
        return gradients_of(params)

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
        clear_grads(meta)
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
        return gradients_of(meta)

    return run


def _reptile_deepcopy(
    model: nn.Module, batch: SineBatch, steps: int, lr: float
) -> Callable[[], Gradient]:
    """The Reptile demo's serial loop: deepcopy, manual SGD on minibatches, θ − θ̃ averaged."""
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


def _compiled(
    algo: MetaLearner, batch: SineBatch
) -> tuple[dict[str, Callable[[], Gradient]], dict[str, Callable[[], dict[str, Any]]]]:
    """The ``metaopt-compiled`` row of a case: its implementation and its compile record."""
    return {"metaopt-compiled": _metaopt(algo, batch)}, {
        "metaopt-compiled": lambda: compile_record(algo)
    }


def cases(quick: bool = False) -> list[Case]:
    """The sine configurations of the issue: MAML at 1 and 5 steps, Meta-SGD, Reptile."""
    tasks, shots = (5, 5) if quick else (25, 10)
    cases = []
    for steps in (1, 5):
        batch = SineBatch(tasks, shots)
        compiled, compile_records = _compiled(
            MAML(sine_mlp(), 0.01, steps, engine="compiled"), batch
        )
        impls: dict[str, Callable[[], Gradient]] = {
            **compiled,
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
                memory=memory_sweep(quick) if steps == 1 else None,
                compiled=compile_records,
            )
        )
    batch = SineBatch(tasks, shots)
    vmap_algo = MetaSGD(sine_mlp(), 0.01, 1, engine="vmap")
    loop_algo = MetaSGD(sine_mlp(), 0.01, 1, engine="loop")
    rates = MetaSGD(sine_mlp(), 0.01).rate_parameters()
    baseline_model = sine_mlp()
    learned = MetaSGD(baseline_model, 0.01)  # its rates, handed to a plain TorchOpt loop
    compiled, compile_records = _compiled(MetaSGD(sine_mlp(), 0.01, 1, engine="compiled"), batch)
    cases.append(
        Case(
            "sine-metasgd-1step",
            {
                **compiled,
                "torch.func": _func_reference(sine_mlp(), batch, 1, 0.01, rates=rates),
                "metaopt-vmap": _metaopt(vmap_algo, batch),
                "metaopt-loop": _metaopt(loop_algo, batch, as_list=True),
                "torchopt-loop": _with_rates(baseline_model, learned, batch),
            },
            reference="torch.func",
            description=f"Meta-SGD (θ and α), meta-batch {tasks}, K={shots}, 1 inner step",
            ratios_to=("torchopt-loop", "torch.func"),
            compiled=compile_records,
        )
    )
    batch = SineBatch(tasks, shots)
    cases.append(
        Case(
            "sine-maml-20step-checkpointed",
            {
                "metaopt-vmap": _metaopt(MAML(sine_mlp(), 0.01, 20, engine="vmap"), batch),
                "metaopt-checkpointed": _metaopt(
                    MAML(sine_mlp(), 0.01, 20, engine="vmap", unroll_checkpoints=CHECKPOINTS),
                    batch,
                ),
            },
            reference="metaopt-vmap",
            description=f"second-order MAML, meta-batch {tasks}, K={shots}, 20 inner steps: "
            f"checkpointed unrolling ({CHECKPOINTS} states held) against the plain unroll",
            ratios_to=("metaopt-vmap",),
        )
    )
    grid = 10 if quick else 50
    batch = SineBatch(tasks, grid, minibatch=grid // 5)
    compiled, compile_records = _compiled(
        Reptile(sine_mlp(64, nn.Tanh), 0.02, 5, engine="compiled"), batch
    )
    cases.append(
        Case(
            "sine-reptile-5step",
            {
                **compiled,
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
            compiled=compile_records,
        )
    )
    return cases


def _with_rates(model: nn.Module, algo: MetaLearner, batch: SineBatch) -> Callable[[], Gradient]:
    """A plain TorchOpt extract/recover loop with the algorithm's learned per-parameter rates."""
    rates = algo.rate_parameters()
    run_loop = _torchopt_loop(
        model, batch, 1, learned_rate_sgd([rates[i] for i in torchopt_order(model)])
    )
    meta = list(model.parameters()) + rates

    def run() -> Gradient:
        clear_grads(meta)
        run_loop()
        return gradients_of(meta)

    return run


def memory_sweep(quick: bool) -> MemorySweep:
    """MAML (plain and checkpointed unroll), first-order MAML, Reptile and iMAML (vectorised
    engine) on one sine meta-batch.

    iMAML at λ = 50 with 10 CG steps: I + H/λ is positive definite at this initialisation
    (the ReLU MLP's support Hessians have eigenvalues down to about −27), so the solve converges.
    """
    tasks, shots = (5, 5) if quick else (25, 10)

    def iterations(k: int) -> dict[str, Callable[[], object]]:
        batch = SineBatch(tasks, shots)
        return {
            "maml": _metaopt(MAML(sine_mlp(), 0.01, k), batch),
            "maml-checkpointed": _metaopt(
                MAML(sine_mlp(), 0.01, k, unroll_checkpoints=CHECKPOINTS), batch
            ),
            "fomaml": _metaopt(MAML(sine_mlp(), 0.01, k, first_order=True), batch),
            "reptile": _metaopt(Reptile(sine_mlp(), 0.01, k), batch),
            "imaml": _metaopt(IMAML(sine_mlp(), 0.01, k, reg=50.0, cg_steps=10), batch),
        }

    return MemorySweep(
        name="sine",
        description="sine, vectorised engine",
        title="sine, meta-batch 25, K=10, vectorised engine",
        iterations=iterations,
    )
