"""Checkpointed unrolling (``unroll_checkpoints=N``): the plain unroll's meta-gradient and
metrics in float64, on every schedule; the schedule's own promises; the refusals."""

from __future__ import annotations

import pytest
import torch
from core_helpers import StackedTasks
from test_engine import RegressionBatch, build, meta_gradient, mlp
from torch import nn

import metaopt
from metaopt.options import ConfigError
from metaopt.tools.bench import peak_memory_bytes
from metaopt.unroll import UnrollMismatchError, _schedule, schedule_cost

pytestmark = pytest.mark.usefixtures("one_thread")


class StepBatch(RegressionBatch):
    """Inner step k sees its own half of the support points: a recomputed step must be step k."""

    def support_losses(self, forward, step):
        if step is None:
            return super().support_losses(forward, step)
        half = self.xs.shape[1] // 2
        rows = slice(0, half) if step % 2 == 0 else slice(half, None)
        return ((forward(self.xs[:, rows]) - self.ys[:, rows]) ** 2).mean(dim=(1, 2)) * (1 + step)


def checkpointed(name: str, model: nn.Module, steps: int, slots: int) -> metaopt.MetaLearner:
    algo = build(name, model, "vmap", steps)
    algo.unroll_checkpoints = slots
    return algo


NAMES = ["maml", "maml-adam", "metasgd", "maml-anil", "metasgd-anil"]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize(("steps", "slots"), [(1, 1), (2, 1), (5, 1), (5, 2), (7, 3), (6, 10)])
def test_the_plain_unrolls_meta_gradient_in_float64(name: str, steps: int, slots: int) -> None:
    # Against both engines' plain unroll; the loop engine's tasks have no per-step support set.
    for engine, tasks in (
        ("loop", RegressionBatch(4, torch.float64)),
        ("vmap", StepBatch(4, torch.float64)),
    ):
        plain, plain_metrics = meta_gradient(build(name, mlp(torch.float64), engine, steps), tasks)
        grad, metrics = meta_gradient(checkpointed(name, mlp(torch.float64), steps, slots), tasks)
        relative = float((grad - plain).norm() / plain.norm())
        assert relative <= 1e-12, f"{engine}: relative difference {relative:.3g}"
        for field in ("support_before", "support_after", "query"):
            torch.testing.assert_close(
                getattr(metrics, field), getattr(plain_metrics, field), rtol=1e-12, atol=0
            )


def test_float32_and_frozen_parameters() -> None:
    tasks = RegressionBatch(5, torch.float32)
    grads = []
    for slots in (None, 2):
        model = mlp(torch.float32)
        model[2].weight.requires_grad_(False)
        algo = metaopt.MetaSGD(model, inner_lr=0.05, inner_steps=4, unroll_checkpoints=slots)
        grads.append(meta_gradient(algo, tasks)[0])
        assert model[2].weight.grad is None
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-6, atol=1e-7)


def test_gradients_accumulate_and_scale() -> None:
    tasks = RegressionBatch(3, torch.float64)
    algo = metaopt.MAML(mlp(torch.float64), inner_lr=0.05, inner_steps=3, unroll_checkpoints=1)
    algo.meta_backward(tasks, scale=0.5)
    once = [p.grad.clone() for p in algo.meta_parameters()]
    algo.meta_backward(tasks, scale=0.5)
    for p, g in zip(algo.meta_parameters(), once, strict=True):
        torch.testing.assert_close(p.grad, 2 * g, rtol=1e-14, atol=0)
    plain = metaopt.MAML(mlp(torch.float64), inner_lr=0.05, inner_steps=3)
    plain.meta_backward(tasks)  # weight 1/3
    for p, q in zip(algo.meta_parameters(), plain.meta_parameters(), strict=True):
        torch.testing.assert_close(p.grad, 3 * q.grad, rtol=1e-12, atol=0)


@pytest.mark.parametrize("steps", range(1, 13))
@pytest.mark.parametrize("slots", [1, 2, 3, 5, 20])
def test_the_schedule_reverses_every_step_once_within_its_slots(steps: int, slots: int) -> None:
    held, reversed_steps, advanced, peak = {0}, [], 0, 0
    for action, a, m in _schedule(steps, slots):
        if action == "hold":
            assert a in held and a < m and m not in held
            held.add(m)
            advanced += m - a
        elif action == "free":
            held.remove(a)
        else:
            assert a in held
            reversed_steps.append(a)
        peak = max(peak, len(held) - 1)
    assert reversed_steps == list(range(steps - 1, -1, -1))
    assert peak <= min(slots, max(steps - 1, 1))
    assert held == {0}
    assert advanced + 1 == schedule_cost(steps, slots)


def test_schedule_costs_at_the_extremes() -> None:
    for n in range(2, 15):
        assert schedule_cost(n, n - 1) == n  # every state stored once: the first pass only
        assert schedule_cost(n, 1) == n * (n - 1) // 2 + 1  # from θ for every step
    assert schedule_cost(20, 3) < schedule_cost(20, 2) < schedule_cost(20, 1)


class Counting(RegressionBatch):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.calls = 0

    def support_losses(self, forward, step):
        self.calls += step is not None
        return super().support_losses(forward, step)


@pytest.mark.parametrize(("steps", "slots"), [(6, 1), (6, 2), (9, 3)])
def test_the_unroll_takes_the_steps_the_schedule_counts(steps: int, slots: int) -> None:
    tasks = Counting(3, torch.float64)
    algo = metaopt.MAML(mlp(torch.float64), 0.05, steps, unroll_checkpoints=slots)
    algo.meta_backward(tasks)
    # the steps without a graph, then one with a graph per vector-Jacobian product
    assert tasks.calls == schedule_cost(steps, slots) + steps


def test_memory_stays_bounded_as_the_steps_grow() -> None:
    tasks = RegressionBatch(16, torch.float32, points=4)

    def peak(steps: int, slots: int | None) -> int:
        algo = metaopt.MAML(mlp(torch.float32), 0.05, steps, unroll_checkpoints=slots)
        algo.meta_backward(tasks)  # one-off allocations are not the iteration's
        return peak_memory_bytes(lambda: algo.meta_backward(tasks))

    one, plain, bounded = peak(1, None), peak(16, None), peak(16, 2)
    assert plain > 4 * one  # the plain unroll grows with the steps
    assert bounded < 2 * one


def test_refusals_name_the_argument() -> None:
    model = mlp(torch.float64)
    for bad in (0, -1, 1.5, True, "2"):
        with pytest.raises(ConfigError, match="unroll_checkpoints must be an integer >= 1"):
            metaopt.MAML(model, unroll_checkpoints=bad)
    with pytest.raises(ValueError, match="first-order MAML keeps no graph"):
        metaopt.MAML(model, first_order=True, unroll_checkpoints=2)
    for engine in ("loop", "compiled"):
        with pytest.raises(ValueError, match=f"not engine='{engine}'"):
            metaopt.MetaSGD(model, engine=engine, unroll_checkpoints=2)
    for cls in (metaopt.Reptile, metaopt.IMAML):
        with pytest.raises(TypeError, match="unroll_checkpoints"):
            cls(model, unroll_checkpoints=2)


def test_a_meta_batch_the_loop_engine_runs_is_refused() -> None:
    algo = metaopt.MAML(mlp(torch.float64), inner_steps=2, unroll_checkpoints=1)
    tasks = list(RegressionBatch(3, torch.float64))  # a list of tasks: the loop engine
    with pytest.raises(TypeError, match="unroll_checkpoints runs on the vectorised engine"):
        algo.meta_backward(tasks)
    assert all(p.grad is None for p in algo.meta_parameters())


class Resampling(StackedTasks):
    """Support losses on fresh noise at every call, as an RL task's sampled trajectories."""

    def __init__(self) -> None:
        g = torch.Generator().manual_seed(0)
        x = torch.randn(3, 2, 6, 3, generator=g, dtype=torch.float64)
        self.stack(x[:, 0], x[:, 0, :, :1], x[:, 1], x[:, 1, :, :1])

    def support_losses(self, forward, step):
        noise = torch.randn(self.xs.shape, dtype=self.xs.dtype)
        return ((forward(self.xs + noise) - self.ys) ** 2).mean(dim=(1, 2))


def test_losses_that_change_when_recomputed_are_refused() -> None:
    algo = metaopt.MAML(mlp(torch.float64), inner_steps=3, unroll_checkpoints=1)
    with pytest.raises(UnrollMismatchError, match="support_losses at inner step"):
        algo.meta_backward(Resampling())


def test_running_batch_norm_statistics_are_refused() -> None:
    model = nn.Sequential(nn.Linear(3, 8), nn.BatchNorm1d(8), nn.Linear(8, 1)).double()
    algo = metaopt.MAML(model, inner_steps=2, unroll_checkpoints=1)
    with pytest.raises(
        TypeError,
        match="unroll_checkpoints cannot run a model whose buffers change during adaptation",
    ):
        algo.meta_backward(RegressionBatch(3, torch.float64))
    algo = metaopt.MAML(model, inner_steps=2, unroll_checkpoints=1, batch_norm="batch")
    algo.meta_backward(RegressionBatch(3, torch.float64))  # batch statistics: nothing updated


def test_train_flag(tmp_path, capsys) -> None:
    from metaopt.cli import main
    from metaopt.training import load_run

    out = tmp_path / "run"
    argv = ["train", "sine", "--iterations", "2", "--inner-steps", "3", "--quiet"]
    assert main([*argv, "--unroll-checkpoints", "1", "--out", str(out)]) == 0
    _, config, algo = load_run(out)
    assert config.options.unroll_checkpoints == 1 and algo.unroll_checkpoints == 1
    for extra, message in (
        (["--algo", "reptile"], "--unroll-checkpoints applies to the second-order unroll"),
        (["--algo", "fomaml"], "--algo fomaml keeps no graph"),
        (["--engine", "compiled"], "--unroll-checkpoints runs on the vectorised engine"),
        (["--unroll-checkpoints", "0"], "--unroll-checkpoints must be an integer >= 1, got 0"),
    ):
        flags = ["--unroll-checkpoints", "2", *extra, "--out", str(tmp_path / "no")]
        assert main([*argv, *flags]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "no").exists()


def test_rl_families_refuse_it() -> None:
    from metaopt.training.config import resolve_config
    from metaopt.training.registry import get_family

    with pytest.raises(ConfigError, match="not available for RL families"):
        resolve_config(get_family("mdp"), {"unroll_checkpoints": 2})
