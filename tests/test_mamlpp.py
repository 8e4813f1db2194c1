"""MAML++'s five changes (Antoniou et al., 2019, "How to train your MAML"), each checked against a
hand-written reference on a small convolutional network with BatchNorm, in float64: learned
per-layer per-step rates (``lslr``), the multi-step loss (``step_weights`` and its schedule),
derivative-order annealing (``--first-order-until``), the cosine outer schedule, and per-step
BatchNorm; then the ``mamlpp`` preset end to end and an exact resume."""

from __future__ import annotations

import json
import math
import signal
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from reliability_helpers import assert_same_run, interrupting
from supervised_helpers import FIXTURE_SPLIT, omniglot_dir_fixture  # noqa: F401 - a fixture
from torch import nn

from metaopt import MAML, MetaSGD
from metaopt.cli import main
from metaopt.nn import PerStepBatchNorm, at_inner_step, per_step_batch_norm
from metaopt.training import TrainingInterrupted, resume, train
from metaopt.training import checkpoint as ckpt
from metaopt.training.build import outer_schedule
from metaopt.training.config import resolve_config
from metaopt.training.family import ConfigError
from metaopt.training.schedules import apply_schedules, multi_step_weights
from supervised.omniglot.family import OmniglotFamily

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


# -- the schedules the training loop applies --------------------------------------------------


def test_apply_schedules_switches_order_and_weights_by_iteration() -> None:
    algo = MAML(ConvNet(), inner_lr=LR, inner_steps=STEPS, batch_norm="batch")
    config = SimpleNamespace(
        algo="maml", first_order_until=2, multi_step_loss=True, msl_iterations=3, inner_steps=STEPS
    )
    seen = []
    for iteration in range(1, 6):
        apply_schedules(algo, config, iteration)
        seen.append((algo.first_order, algo.step_weights))
    assert [order for order, _ in seen] == [True, True, False, False, False]
    assert [w for _, w in seen] == [multi_step_weights(STEPS, t, 3) for t in range(5)]
    assert seen[-1][1] is None  # past --msl-iterations: the last step's loss alone
    # the first-order iterations' meta-gradient is first-order MAML's
    apply_schedules(algo, config, 1)
    algo.step_weights = None
    want, _ = reference_meta_gradient(algo.model, Tasks(), second_order=False)
    assert_close(meta_gradient(algo, Tasks())[0], want)
    # first-order MAML is first order throughout: the annealing leaves it so
    fomaml = MAML(ConvNet(), inner_lr=LR, inner_steps=STEPS, first_order=True)
    apply_schedules(fomaml, SimpleNamespace(**{**vars(config), "algo": "fomaml"}), 5)
    assert fomaml.first_order


# -- the preset end to end, resume, refusals --------------------------------------------------

#: The mamlpp preset shrunk to the fixture: every option on, each schedule crossing mid-run.
TINY = {
    **FIXTURE_SPLIT,
    "preset": "mamlpp",
    "iterations": 6,
    "msl_iterations": 4,
    "first_order_until": 3,
    "inner_steps": 2,
    "meta_batch": 2,
    "filters": 8,
    "image_size": 14,
    "eval_tasks": 4,
    "baseline_steps": 2,
}


@pytest.mark.usefixtures("one_thread")
def test_mamlpp_preset_trains_and_resumes_exactly(tmp_path: Path, omniglot_dir: Path) -> None:
    values = {**TINY, "data_dir": str(omniglot_dir), "checkpoint_every": 2}
    config = resolve_config(OmniglotFamily(), {**values, "out": str(tmp_path / "full")})
    assert (config.algo, config.options.lslr, config.per_step_bn, config.multi_step_loss) == (
        "maml", True, True, True,
    )  # fmt: skip
    assert (config.outer_schedule, config.outer_lr_min) == ("cosine", 1e-5)
    full = train(OmniglotFamily(), config, progress=False)
    state = ckpt.load_checkpoint(full / "checkpoint.pt")
    rates = state["algorithm"]["learned"]
    assert [tuple(r.shape) for r in rates] == [(2,)] * len(rates)  # per layer, per step
    assert any(not torch.equal(r, torch.full_like(r, 0.1)) for r in rates)  # meta-learned
    model = state["algorithm"]["model"]
    weights = [t for n, t in model.items() if n.endswith("1.weight") and t.dim() == 2]
    assert weights and all(w.shape[0] == 3 for w in weights)  # K + 1 BatchNorm rows
    cut = tmp_path / "cut"
    with pytest.raises(TrainingInterrupted):
        train(
            interrupting(OmniglotFamily(), 3, signal.SIGTERM),
            resolve_config(OmniglotFamily(), {**values, "out": str(cut)}),
            progress=False,
        )
    with pytest.raises(ConfigError, match="with --outer-schedule cosine the outer learning-rate"):
        resume(cut, family=OmniglotFamily(), overrides={"iterations": 8}, progress=False)
    resume(cut, family=OmniglotFamily(), progress=False)
    assert_same_run(full, cut)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["sine", "--per-step-bn"], "--per-step-bn: the sine family's model has no BatchNorm"),
        (["sine", "--algo", "reptile", "--per-step-bn"], "--per-step-bn applies to maml"),
        (["sine", "--engine", "compiled", "--per-step-bn"], "--per-step-bn runs on the loop"),
        (["sine", "--algo", "metasgd", "--lslr"], "--lslr applies to --algo maml and fomaml"),
        (["sine", "--algo", "reptile", "--first-order-until", "5"], "--first-order-until applies"),
        (["sine", "--algo", "imaml", "--multi-step-loss"], "--multi-step-loss applies"),
        (["sine", "--engine", "compiled", "--multi-step-loss"], "--multi-step-loss runs on the"),
        (["mdp", "--multi-step-loss"], "--multi-step-loss is not available for RL families"),
        (["sine", "--outer-schedule", "step"], "--outer-schedule must be one of"),
        (["sine", "--anneal", "--outer-schedule", "cosine"], "--anneal is --outer-schedule linear"),
        (["sine", "--msl-iterations", "0"], "--msl-iterations must be"),
    ],
)
def test_refusals_are_one_line_and_write_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str], message: str
) -> None:
    out = tmp_path / "run"
    try:
        status = main(["train", *flags, "--iterations", "1", "--out", str(out)])
    except SystemExit as exit_:  # argparse's own refusals exit, the config's return
        status = exit_.code
    assert status == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
    assert not out.exists()


def test_the_preset_on_the_command_line(
    tmp_path: Path, omniglot_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in TINY.items() if k != "iterations"]
    status = main(
        ["train", "omniglot", "--data-dir", str(omniglot_dir), *flags, "--iterations", "2",
         "--out", str(out)]
    )  # fmt: skip
    assert status in (0, None)
    saved = json.loads((out / "config.json").read_text())["config"]
    assert saved["per_step_bn"] and saved["algo_options"]["maml"]["lslr"]
    assert (out / "eval.json").exists()


@pytest.mark.parametrize("engine", ENGINES)
def test_per_step_running_statistics_in_training_mode_are_restored(engine: str) -> None:
    # training mode with running statistics: batch statistics normalise, each step's row of the
    # running statistics is updated during a task's adaptation and restored after it
    model, tasks = per_step_net(), Tasks()
    saved = {n: b.clone() for n, b in model.named_buffers()}
    algo = MAML(model, inner_lr=LR, inner_steps=STEPS, engine=engine, batch_norm="running")
    want, _ = reference_meta_gradient(model, tasks, second_order=True)
    theta, _ = meta_gradient(algo, tasks)
    assert algo.last_engine == engine
    assert_close(theta, want)
    for name, buffer in model.named_buffers():
        assert torch.equal(buffer, saved[name]), name


@pytest.mark.slow
def test_lslr_traced_as_the_compiled_engine_traces_it(omniglot_dir: Path) -> None:
    # The compiled engine's trace (dynamo and AOT autograd, the ``aot_eager`` backend) of a
    # meta-iteration with per-step rates gives the vectorised engine's meta-gradient exactly.
    from metaopt.compiled import CompiledMetaGradient
    from metaopt.training.build import build_algorithm

    family = OmniglotFamily()
    values = {**TINY, "data_dir": str(omniglot_dir), "engine": "vmap"}
    config = resolve_config(family, {**values, "per_step_bn": False})
    algo = build_algorithm(config, family.make_model(config))
    with torch.no_grad():
        for i, rate in enumerate(algo.learned_tensors()):
            rate.mul_(torch.tensor([1.0, 0.5]) * (1 + 0.1 * i))
    tasks = family.sample_tasks(config, np.random.default_rng(0), 2)
    algo.meta_backward(tasks)
    want = [p.grad.clone() for p in algo.meta_parameters()]
    for p in algo.meta_parameters():
        p.grad = None
    engine = CompiledMetaGradient(
        algo.model, algo.rule, algo.learned_tensors(), steps=config.inner_steps,
        inner_optimizer="sgd", inner_lr=algo.inner_lr, batch_norm=config.batch_norm,
        options={"backend": "aot_eager"},
    )  # fmt: skip
    engine(tasks, 1 / len(tasks))
    for found, expected in zip((p.grad for p in algo.meta_parameters()), want, strict=True):
        torch.testing.assert_close(found, expected, rtol=1e-5, atol=1e-7)
