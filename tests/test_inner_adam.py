"""metaopt's inner Adam is the textbook update: against torch.optim.Adam, TorchOpt and a hand unroll."""

from __future__ import annotations

import pytest
import torch
import torchopt
from torch import nn

import metaopt
from metaopt.inner import adam


def _gradients(steps: int, dtype: torch.dtype) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return [torch.randn(7, generator=g, dtype=dtype) for _ in range(steps)]


@pytest.mark.parametrize("steps", [1, 4])
def test_steps_equal_torch_optim_adam_in_float64(steps: int) -> None:
    start = torch.randn(7, dtype=torch.float64)
    theirs = nn.Parameter(start.clone())
    optimizer = torch.optim.Adam([theirs], lr=0.1)
    transform = adam(0.1, eps_root=0.0)  # torch.optim.Adam has no ε inside the root
    state = transform.init((start,))
    ours = start
    for g in _gradients(steps, torch.float64):
        theirs.grad = g.clone()
        optimizer.step()
        (update,), state = transform.update((g,), state, inplace=False)
        ours = ours + update
    torch.testing.assert_close(ours, theirs.detach(), rtol=1e-12, atol=1e-15)


def test_bias_correction_is_exact_where_torchopts_float32_one_is_not() -> None:
    # TorchOpt rounds β₂ to float32 before 1 − β₂ᵗ: 0.00099998713 instead of 0.001, which puts
    # a float64 step ~1e-5 (relative, in √v̂) off the textbook value.
    g = _gradients(1, torch.float64)[0]
    expected = -0.1 * g / (g.abs() + 1e-8)  # step 1: m̂ = g, v̂ = g²
    (ours,), _ = adam(0.1, eps_root=0.0).update((g,), adam(0.1).init((g,)), inplace=False)
    torch.testing.assert_close(ours, expected, rtol=1e-14, atol=0)
    transform = torchopt.adam(lr=0.1)
    (theirs,), _ = transform.update((g,), transform.init((g,)), inplace=False)
    assert ((theirs - expected).abs() / expected.abs()).max() > 1e-6


@pytest.mark.parametrize("betas", [(0.5, 0.75), (0.25, 0.5)])
def test_equal_to_torchopt_in_float32_where_torchopt_is_exact(betas) -> None:
    # With betas that float32 holds exactly, TorchOpt's bias correction is right and the two
    # transformations compute the same numbers, with the same graph for the moments.
    start = torch.randn(7)
    ours_t, theirs_t = adam(0.1, betas=betas), torchopt.adam(lr=0.1, betas=betas, eps_root=1e-8)
    ours_s, theirs_s = ours_t.init((start,)), theirs_t.init((start,))
    ours = theirs = start
    for g in _gradients(5, torch.float32):
        (u,), ours_s = ours_t.update((g,), ours_s, inplace=False)
        (v,), theirs_s = theirs_t.update((g,), theirs_s, inplace=False)
        ours, theirs = ours + u, theirs + v
    torch.testing.assert_close(ours, theirs, rtol=0, atol=0)


def test_a_gradient_entry_that_stays_zero_gives_a_finite_meta_gradient_without_eps_root() -> None:
    # d√v/dv is infinite at v = 0; TorchOpt's update (eps_root=0) turns that into NaN.
    theta = torch.tensor([1.0, 2.0], dtype=torch.float64, requires_grad=True)
    transform = adam(0.1, eps_root=0.0)
    params, state = (theta,), transform.init((theta,))
    for _ in range(3):
        loss = (params[0][0] - 3.0) ** 2  # entry 1 has gradient exactly 0
        grads = torch.autograd.grad(loss, params, create_graph=True)
        updates, state = transform.update(grads, state, inplace=False)
        params = (params[0] + updates[0],)
    (meta,) = torch.autograd.grad(params[0].sum(), theta)
    assert torch.isfinite(meta).all()
    assert meta[1] == 1.0  # an entry that never moved: θ'₁ = θ₁


class Batch(list):
    def __init__(self, num_tasks: int) -> None:
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(num_tasks, 8, 3, generator=g, dtype=torch.float64)
        self.y = torch.sin(
            self.x.sum(-1, keepdim=True) * torch.linspace(0.5, 1.5, num_tasks)[:, None, None]
        )
        super().__init__(Task(self, b) for b in range(num_tasks))

    def support_losses(self, forward, step):
        return ((forward(self.x[:, :4]) - self.y[:, :4]) ** 2).mean(dim=(1, 2))

    def query_losses(self, forward):
        return ((forward(self.x[:, 4:]) - self.y[:, 4:]) ** 2).mean(dim=(1, 2))


class Task:
    def __init__(self, batch: Batch, index: int) -> None:
        self.batch, self.index = batch, index

    def support_loss(self, model):
        x, y = self.batch.x[self.index], self.batch.y[self.index]
        return ((model(x[:4]) - y[:4]) ** 2).mean()

    def query_loss(self, model):
        x, y = self.batch.x[self.index], self.batch.y[self.index]
        return ((model(x[4:]) - y[4:]) ** 2).mean()


def _unrolled_adam_meta_gradient(model: nn.Module, tasks: Batch, lr: float, steps: int) -> list:
    """MAML with an Adam inner loop, by hand: functional_call, autograd.grad, textbook Adam
    (ε_root = 1e-8 inside the root, as metaopt's default)."""
    b1, b2, eps, eps_root = 0.9, 0.999, 1e-8, 1e-8
    theta = dict(model.named_parameters())
    total = [torch.zeros_like(p) for p in theta.values()]
    for task in tasks:
        params = dict(theta)
        m = {n: torch.zeros_like(p) for n, p in params.items()}
        v = {n: torch.zeros_like(p) for n, p in params.items()}
        for t in range(1, steps + 1):
            x, y = task.batch.x[task.index], task.batch.y[task.index]
            loss = ((torch.func.functional_call(model, params, (x[:4],)) - y[:4]) ** 2).mean()
            grads = torch.autograd.grad(loss, list(params.values()), create_graph=True)
            for (n, p), g in zip(list(params.items()), grads, strict=True):
                m[n] = b1 * m[n] + (1 - b1) * g
                v[n] = b2 * v[n] + (1 - b2) * g * g
                step = (m[n] / (1 - b1**t)) / (torch.sqrt(v[n] / (1 - b2**t) + eps_root) + eps)
                params[n] = p - lr * step
        x, y = task.batch.x[task.index], task.batch.y[task.index]
        query = ((torch.func.functional_call(model, params, (x[4:],)) - y[4:]) ** 2).mean()
        for i, g in enumerate(torch.autograd.grad(query, list(theta.values()))):
            total[i] += g / len(tasks)
    return total


@pytest.mark.parametrize("engine", ["loop", "vmap"])
def test_maml_with_inner_adam_matches_a_hand_unrolled_loop_in_float64(engine: str) -> None:
    def model() -> nn.Module:
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(3, 16), nn.Tanh(), nn.Linear(16, 1)).double()

    tasks = Batch(4)
    want = _unrolled_adam_meta_gradient(model(), tasks, lr=0.05, steps=5)
    net = model()
    algo = metaopt.MAML(net, inner_lr=0.05, inner_steps=5, inner_optimizer="adam", engine=engine)
    algo.meta_backward(tasks if engine == "vmap" else list(tasks))
    assert algo.last_engine == engine
    got = torch.cat([p.grad.reshape(-1) for p in net.parameters()])
    ref = torch.cat([g.reshape(-1) for g in want])
    assert ((got - ref).norm() / ref.norm()).item() <= 1e-10
