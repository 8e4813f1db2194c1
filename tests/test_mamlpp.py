"""MAML++'s five changes (Antoniou et al., 2019, "How to train your MAML"), each checked against a
hand-written reference on a small convolutional network with BatchNorm, in float64: learned
per-layer per-step rates (``lslr``), the multi-step loss (``step_weights`` and its schedule),
derivative-order annealing (``--first-order-until``), the cosine outer schedule, and per-step
BatchNorm; then the ``mamlpp`` preset end to end and an exact resume."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from metaopt import MAML, MetaSGD
from metaopt.nn import PerStepBatchNorm, at_inner_step, per_step_batch_norm
from metaopt.training.build import outer_schedule
from metaopt.training.schedules import multi_step_weights

STEPS = 3
LR = 0.3


class ConvNet(nn.Module):
    """Two 3×3 convolutions with BatchNorm and ReLU, a linear head: 2 classes from 1×5×5."""

    def __init__(self, norm: type[nn.Module] = nn.BatchNorm2d, **norm_args: int) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv1 = nn.Conv2d(1, 3, 3, padding=1)
        self.bn1 = norm(3, **norm_args)
        self.conv2 = nn.Conv2d(3, 2, 3)
        self.bn2 = norm(2, **norm_args)
        self.head = nn.Linear(2 * 3 * 3, 2)
        self.double()
        with torch.no_grad():  # affine parameters away from 1 and 0, so errors show
            for bn in (self.bn1, self.bn2):
                bn.weight.uniform_(0.5, 1.5)
                bn.bias.uniform_(-0.5, 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        return self.head(x.flatten(1))


class Tasks(list):
    """Two-class tasks with stacked images, for both engines (a BatchedTasks of Task views)."""

    def __init__(self, num_tasks: int = 2, seed: int = 1) -> None:
        g = torch.Generator().manual_seed(seed)
        self.xs = torch.randn(num_tasks, 4, 1, 5, 5, generator=g, dtype=torch.float64)
        self.xq = torch.randn(num_tasks, 6, 1, 5, 5, generator=g, dtype=torch.float64)
        self.ys = torch.randint(0, 2, (num_tasks, 4), generator=g)
        self.yq = torch.randint(0, 2, (num_tasks, 6), generator=g)
        super().__init__(Task(self, b) for b in range(num_tasks))

    @staticmethod
    def _losses(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return (
            F.cross_entropy(out.flatten(0, 1), y.flatten(), reduction="none").view(y.shape).mean(1)
        )

    def support_losses(self, forward, step):
        return self._losses(forward(self.xs), self.ys)

    def query_losses(self, forward):
        return self._losses(forward(self.xq), self.yq)


class Task:
    def __init__(self, batch: Tasks, index: int) -> None:
        self.batch, self.index = batch, index

    def support_loss(self, model):
        return F.cross_entropy(model(self.batch.xs[self.index]), self.batch.ys[self.index])

    def query_loss(self, model):
        return F.cross_entropy(model(self.batch.xq[self.index]), self.batch.yq[self.index])


# -- the hand-written reference: the network as a function of its tensors, a plain inner loop --


def reference_forward(
    p: dict[str, torch.Tensor],
    x: torch.Tensor,
    step: int = 0,
    running: dict[str, torch.Tensor] | None = None,
) -> torch.Tensor:
    """``ConvNet``'s forward with BatchNorm on the batch's statistics (or on the ``running``
    statistics, as a module in evaluation mode); a per-step BatchNorm's tensors (``[S, C]``)
    read at row ``min(step, S - 1)``."""

    def norm(h: torch.Tensor, name: str) -> torch.Tensor:
        w, b = p[f"{name}.weight"], p[f"{name}.bias"]
        row = min(step, len(w) - 1)
        if w.dim() == 2:
            w, b = w[row], b[row]
        if running is not None:
            mean = running[f"{name}.running_mean"][row].view(1, -1, 1, 1)
            var = running[f"{name}.running_var"][row].view(1, -1, 1, 1)
        else:
            mean = h.mean(dim=(0, 2, 3), keepdim=True)
            var = h.var(dim=(0, 2, 3), unbiased=False, keepdim=True)
        return (h - mean) / torch.sqrt(var + 1e-5) * w.view(1, -1, 1, 1) + b.view(1, -1, 1, 1)

    h = F.relu(norm(F.conv2d(x, p["conv1.weight"], p["conv1.bias"], padding=1), "bn1"))
    h = F.relu(norm(F.conv2d(h, p["conv2.weight"], p["conv2.bias"]), "bn2"))
    return F.linear(h.flatten(1), p["head.weight"], p["head.bias"])


def reference_meta_gradient(
    model: nn.Module,
    tasks: Tasks,
    *,
    second_order: bool,
    rates: dict[str, torch.Tensor] | None = None,
    step_weights: tuple[float, ...] | None = None,
    running: dict[str, torch.Tensor] | None = None,
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """The mean over tasks of the meta-gradient, written out: ``STEPS`` SGD steps per task at
    ``LR`` or at the per-step ``rates[name][k]``; the query loss after the last step, or
    Σ_k w_k L^q(θ_k) with ``step_weights``. Returns the gradients of θ and of the rates."""
    theta = {n: p.detach().clone().requires_grad_() for n, p in model.named_parameters()}
    lrs = {n: r.detach().clone().requires_grad_() for n, r in (rates or {}).items()}
    total = torch.zeros((), dtype=torch.float64)
    for b in range(len(tasks)):
        params = dict(theta)
        outer = torch.zeros((), dtype=torch.float64)
        for k in range(STEPS):
            support = F.cross_entropy(
                reference_forward(params, tasks.xs[b], k, running), tasks.ys[b]
            )
            grads = torch.autograd.grad(support, list(params.values()), create_graph=second_order)
            params = {
                n: q - (lrs[n][k] if lrs else LR) * g
                for (n, q), g in zip(params.items(), grads, strict=True)
            }
            if step_weights is not None:
                query = F.cross_entropy(
                    reference_forward(params, tasks.xq[b], k + 1, running), tasks.yq[b]
                )
                outer = outer + step_weights[k] * query
        if step_weights is None:
            outer = F.cross_entropy(
                reference_forward(params, tasks.xq[b], STEPS, running), tasks.yq[b]
            )
        total = total + outer / len(tasks)
    found = torch.autograd.grad(total, [*theta.values(), *lrs.values()])
    return dict(zip(theta, found[: len(theta)], strict=True)), dict(
        zip(lrs, found[len(theta) :], strict=True)
    )


def meta_gradient(algo: MAML, tasks: Tasks) -> tuple[dict[str, torch.Tensor], list[torch.Tensor]]:
    for p in algo.meta_parameters():
        p.grad = None
    algo.meta_backward(tasks)
    theta = {n: p.grad.clone() for n, p in algo.model.named_parameters()}
    return theta, [t.grad.clone() for t in algo.learned_tensors() if t.requires_grad]


def assert_close(found: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert found.keys() == want.keys()
    for name in want:
        torch.testing.assert_close(found[name], want[name], rtol=1e-10, atol=1e-12, msg=name)


ENGINES = ("loop", "vmap")


# -- learned per-layer per-step rates -------------------------------------------------------


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("first_order", [False, True])
def test_lslr_meta_gradient_matches_the_reference(engine: str, first_order: bool) -> None:
    model, tasks = ConvNet(), Tasks()
    algo = MAML(
        model, inner_lr=LR, inner_steps=STEPS, first_order=first_order, engine=engine,
        batch_norm="batch", lslr=True,
    )  # fmt: skip
    names = [n for n, _ in model.named_parameters()]
    assert [tuple(r.shape) for r in algo.learned_tensors()] == [(STEPS,)] * len(names)
    with torch.no_grad():  # rates that differ by layer and step, so a mix-up shows
        for i, rate in enumerate(algo.learned_tensors()):
            rate.copy_(LR * (1 + 0.1 * i) * torch.tensor([1.0, 0.7, 1.3], dtype=torch.float64))
    rates = dict(zip(names, algo.learned_tensors(), strict=True))
    want_theta, want_rates = reference_meta_gradient(
        model, tasks, second_order=not first_order, rates=rates
    )
    theta, found_rates = meta_gradient(algo, tasks)
    assert_close(theta, want_theta)
    assert_close(dict(zip(names, found_rates, strict=True)), want_rates)


def test_lslr_refuses_meta_sgd_and_adam() -> None:
    from metaopt.algorithm_options import metasgd

    with pytest.raises(ValueError, match="lslr does not apply to Meta-SGD"):
        metasgd(ConvNet(), inner_optimizer="sgd", inner_lr=LR, inner_steps=2, lslr=True)
    with pytest.raises(ValueError, match="learned per-step rates .* SGD's"):
        MAML(ConvNet(), inner_lr=LR, inner_steps=2, inner_optimizer="adam", lslr=True)
    assert not MetaSGD(ConvNet(), inner_lr=LR).rule.lslr_steps


# -- the multi-step loss ----------------------------------------------------------------------


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("first_order", [False, True])
def test_multi_step_loss_matches_the_reference(engine: str, first_order: bool) -> None:
    model, tasks = ConvNet(), Tasks()
    algo = MAML(
        model, inner_lr=LR, inner_steps=STEPS, first_order=first_order, engine=engine,
        batch_norm="batch",
    )  # fmt: skip
    algo.step_weights = (0.2, 0.3, 0.5)
    want, _ = reference_meta_gradient(
        model, tasks, second_order=not first_order, step_weights=algo.step_weights
    )
    theta, _ = meta_gradient(algo, tasks)
    assert_close(theta, want)


@pytest.mark.parametrize("engine", ENGINES)
def test_multi_step_loss_with_meta_sgd_matches_the_reference(engine: str) -> None:
    model, tasks = ConvNet(), Tasks()
    algo = MetaSGD(model, inner_lr=LR, inner_steps=STEPS, engine=engine, batch_norm="batch")
    algo.step_weights = (0.2, 0.3, 0.5)
    # Meta-SGD's rates at inner_lr everywhere are plain SGD's step: θ's gradient is MAML's
    want, _ = reference_meta_gradient(model, tasks, second_order=True, step_weights=(0.2, 0.3, 0.5))
    theta, rates = meta_gradient(algo, tasks)
    assert_close(theta, want)
    assert all(bool(r.abs().sum() > 0) for r in rates)


def test_multi_step_loss_refuses_a_wrong_count_and_the_compiled_engine() -> None:
    algo = MAML(ConvNet(), inner_lr=LR, inner_steps=STEPS, batch_norm="batch")
    algo.step_weights = (0.5, 0.5)
    with pytest.raises(ValueError, match="2 weights for 3 inner steps"):
        algo.meta_backward(Tasks())
    compiled = MAML(ConvNet(), inner_lr=LR, inner_steps=STEPS, engine="compiled")
    compiled.step_weights = (0.2, 0.3, 0.5)
    with pytest.raises(ValueError, match="loop and vectorised engines"):
        compiled.meta_backward(Tasks())


def reference_weights(steps: int, epoch: int, epochs: int) -> list[float]:
    """MAML++'s importance vector as its paper's code computes it, written out again."""
    weights = [1.0 / steps] * steps
    decay = 1.0 / steps / epochs
    floor = 0.03 / steps
    for i in range(steps - 1):
        weights[i] = max(weights[i] - epoch * decay, floor)
    weights[-1] = min(weights[-1] + epoch * (steps - 1) * decay, 1.0 - (steps - 1) * floor)
    return weights


@pytest.mark.parametrize("steps", [1, 2, 5])
def test_multi_step_weights_follow_the_formula(steps: int) -> None:
    anneal = 10
    for done in range(anneal):
        found = multi_step_weights(steps, done, anneal)
        assert found is not None and len(found) == steps
        assert found == pytest.approx(reference_weights(steps, done, anneal), abs=1e-15)
    assert multi_step_weights(steps, 0, anneal) == pytest.approx([1 / steps] * steps)
    assert multi_step_weights(steps, anneal, anneal) is None  # the last step's loss alone
    late = multi_step_weights(5, 99, 100)  # past 0.97 N the non-final weights sit at the floor
    assert late is not None and late[0] == pytest.approx(0.03 / 5)  # the floor


# -- the outer schedule ---------------------------------------------------------------------


def test_cosine_outer_schedule_follows_the_formula() -> None:
    param = nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=1e-3)
    schedule = outer_schedule(opt, "cosine", 8, 1e-5)
    assert schedule is not None
    for t in range(9):
        want = 1e-5 + (1e-3 - 1e-5) * (1 + math.cos(math.pi * t / 8)) / 2
        assert opt.param_groups[0]["lr"] == pytest.approx(want, rel=1e-12)
        opt.step()
        schedule.step()
    assert outer_schedule(opt, "constant", 8) is None


# -- per-step BatchNorm -----------------------------------------------------------------------


def per_step_net() -> ConvNet:
    """``ConvNet`` with per-step BatchNorm whose rows all differ, so that a wrong row shows."""
    model = per_step_batch_norm(ConvNet(), STEPS)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, PerStepBatchNorm):
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.5, 0.5)
                module.running_mean.uniform_(-0.3, 0.3)
                module.running_var.uniform_(0.5, 2.0)
    return model


def test_per_step_batch_norm_starts_as_the_layer_it_replaces() -> None:
    plain, x = ConvNet(), Tasks().xs[0]
    converted = per_step_batch_norm(ConvNet(), STEPS)
    assert isinstance(converted.bn1, PerStepBatchNorm)
    assert tuple(converted.bn1.weight.shape) == (STEPS + 1, 3)
    assert tuple(converted.bn2.running_mean.shape) == (STEPS + 1, 2)
    for step in range(STEPS + 2):  # a step past the last reuses the last row
        with at_inner_step(step):
            torch.testing.assert_close(converted(x), plain(x), rtol=0, atol=0)
    with pytest.raises(ValueError, match="momentum"):
        PerStepBatchNorm(3, 2, momentum=None)


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("algo_name", ["maml", "fomaml", "metasgd"])
def test_per_step_batch_norm_meta_gradient_matches_the_reference(
    engine: str, algo_name: str
) -> None:
    model, tasks = per_step_net(), Tasks()
    settings = {"inner_lr": LR, "inner_steps": STEPS, "engine": engine, "batch_norm": "batch"}
    if algo_name == "metasgd":
        algo: MAML = MetaSGD(model, **settings)
    else:
        algo = MAML(model, first_order=algo_name == "fomaml", **settings)
    want, _ = reference_meta_gradient(model, tasks, second_order=algo_name != "fomaml")
    theta, _ = meta_gradient(algo, tasks)
    assert_close(theta, want)


@pytest.mark.parametrize("engine", ENGINES)
def test_per_step_running_statistics_with_lslr_and_the_multi_step_loss(engine: str) -> None:
    # a model in evaluation mode normalises with each step's own running statistics
    model, tasks = per_step_net().eval(), Tasks()
    algo = MAML(model, inner_lr=LR, inner_steps=STEPS, engine=engine, lslr=True)
    algo.step_weights = (0.2, 0.3, 0.5)
    names = [n for n, _ in model.named_parameters()]
    rates = dict(zip(names, algo.learned_tensors(), strict=True))
    running = {n: b.clone() for n, b in model.named_buffers()}
    want_theta, want_rates = reference_meta_gradient(
        model, tasks, second_order=True, rates=rates, step_weights=algo.step_weights,
        running=running,
    )  # fmt: skip
    theta, found_rates = meta_gradient(algo, tasks)
    assert_close(theta, want_theta)
    assert_close(dict(zip(names, found_rates, strict=True)), want_rates)


def test_adapted_models_read_the_row_of_their_step() -> None:
    model, tasks = per_step_net(), Tasks()
    algo = MAML(model, inner_lr=LR, inner_steps=STEPS, batch_norm="batch")
    params = {n: p.detach() for n, p in model.named_parameters()}
    for k in range(2):  # the reference: two steps on task 0
        with torch.enable_grad():
            leaves = {n: q.clone().requires_grad_() for n, q in params.items()}
            loss = F.cross_entropy(reference_forward(leaves, tasks.xs[0], k), tasks.ys[0])
            grads = torch.autograd.grad(loss, list(leaves.values()))
        params = {n: q - LR * g for (n, q), g in zip(params.items(), grads, strict=True)}
    want = reference_forward(params, tasks.xq[0], 2)
    with algo.adapt(tasks[0], steps=2) as adapted, torch.no_grad():
        torch.testing.assert_close(adapted(tasks.xq[0]), want, rtol=1e-10, atol=1e-12)
    forward = list(algo.adapt_batch_path(tasks, 2))[2]
    with torch.no_grad():
        torch.testing.assert_close(forward(tasks.xq)[0], want, rtol=1e-10, atol=1e-12)


def test_the_compiled_engine_refuses_per_step_batch_norm() -> None:
    with pytest.raises(ValueError, match="cannot run bn1, whose forward reads the inner-step"):
        MAML(per_step_net(), inner_lr=LR, inner_steps=STEPS, engine="compiled")
