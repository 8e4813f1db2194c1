r"""Helpers for verifying meta-gradients in your own tests.

* Linear least-squares tasks with closed-form meta-gradients of every algorithm. With support loss
  :math:`\tfrac12\|A\theta-b\|^2` (Hessian :math:`H = A^\top A`), query loss
  :math:`\tfrac12\|C\theta-d\|^2` and n inner SGD steps :math:`\theta_{k+1} = \theta_k - D\,
  (H\theta_k - A^\top b)` with :math:`D = \operatorname{diag}(\alpha)`:

  - MAML: :math:`(I - H D)^n\, g_q` with :math:`g_q = C^\top(C\theta_n - d)` (D = αI);
  - first-order MAML: :math:`g_q`;
  - Meta-SGD, for θ as MAML with D = diag(α); for α: :math:`J_n^\top g_q` with
    :math:`J_0 = 0`, :math:`J_{k+1} = (I - DH)J_k - \operatorname{diag}(H\theta_k - A^\top b)`;
  - Reptile: :math:`\theta - \theta_n`;

  each averaged over the tasks. Computed in NumPy float64, independently of autograd.
* :func:`check_meta_gradient`: an algorithm's ``meta_backward`` against central finite
  differences of the meta-loss.
* :func:`assert_state_restored`: run a function, assert the model and optimiser are bit-identical.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torchopt
from torch import nn

from metaopt.algorithms import MAML, MetaLearner, MetaSGD

__all__ = [
    "LinearModel",
    "LinearTask",
    "assert_state_restored",
    "check_meta_gradient",
    "fomaml_meta_gradient",
    "maml_meta_gradient",
    "metasgd_meta_gradient",
    "random_linear_tasks",
    "reptile_meta_gradient",
]


class LinearModel(nn.Module):
    """θ split over two parameters named so that TorchOpt's order (bias, weight) differs from
    ``parameters()`` order (weight, bias); ``forward()`` returns the flat θ in ``parameters()`` order.
    """

    def __init__(self, theta: np.ndarray, split: int | None = None) -> None:
        super().__init__()
        theta = np.asarray(theta, dtype=np.float64)
        split = len(theta) // 2 if split is None else split
        self.weight = nn.Parameter(torch.as_tensor(theta[:split].copy()))
        self.bias = nn.Parameter(torch.as_tensor(theta[split:].copy()))

    def forward(self) -> torch.Tensor:
        return torch.cat([p.reshape(-1) for p in self.parameters()])


@dataclass
class LinearTask:
    """Least squares: support ½‖Aθ − b‖², query ½‖Cθ − d‖², θ = all parameters flattened."""

    A: np.ndarray
    b: np.ndarray
    C: np.ndarray
    d: np.ndarray

    def _loss(self, model: nn.Module, M: np.ndarray, y: np.ndarray) -> torch.Tensor:
        theta = torch.cat([p.reshape(-1) for p in model.parameters()])
        residual = torch.as_tensor(M, dtype=theta.dtype) @ theta - torch.as_tensor(
            y, dtype=theta.dtype
        )
        return 0.5 * (residual**2).sum()

    def support_loss(self, model: nn.Module) -> torch.Tensor:
        return self._loss(model, self.A, self.b)

    def query_loss(self, model: nn.Module) -> torch.Tensor:
        return self._loss(model, self.C, self.d)


def random_linear_tasks(
    num_tasks: int, dim: int, rng: np.random.Generator, rows: int = 6
) -> list[LinearTask]:
    """Well-conditioned random least-squares tasks (entries ~ N(0, 1/rows))."""
    scale = 1.0 / np.sqrt(rows)
    return [
        LinearTask(
            A=rng.normal(0.0, scale, (rows, dim)),
            b=rng.normal(size=rows),
            C=rng.normal(0.0, scale, (rows, dim)),
            d=rng.normal(size=rows),
        )
        for _ in range(num_tasks)
    ]


def _inner_path(task: LinearTask, theta: np.ndarray, rates: np.ndarray, steps: int) -> list:
    path = [np.asarray(theta, dtype=np.float64)]
    for _ in range(steps):
        grad = task.A.T @ (task.A @ path[-1] - task.b)
        path.append(path[-1] - rates * grad)
    return path


def _query_grad(task: LinearTask, theta: np.ndarray) -> np.ndarray:
    return task.C.T @ (task.C @ theta - task.d)


def maml_meta_gradient(
    tasks: Sequence[LinearTask], theta: np.ndarray, inner_lr: float, steps: int
) -> np.ndarray:
    """Second-order MAML: mean over tasks of (I − αH)ⁿ ∇L_q(θₙ)."""
    rates = np.full(len(theta), inner_lr)
    return metasgd_meta_gradient(tasks, theta, rates, steps)[0]


def fomaml_meta_gradient(
    tasks: Sequence[LinearTask], theta: np.ndarray, inner_lr: float, steps: int
) -> np.ndarray:
    """First-order MAML: mean over tasks of ∇L_q(θₙ)."""
    rates = np.full(len(theta), inner_lr)
    return np.mean([_query_grad(t, _inner_path(t, theta, rates, steps)[-1]) for t in tasks], axis=0)


def metasgd_meta_gradient(
    tasks: Sequence[LinearTask], theta: np.ndarray, rates: np.ndarray, steps: int
) -> tuple[np.ndarray, np.ndarray]:
    """Meta-SGD: the meta-gradients for θ and for the per-entry rates α (flat, θ's layout)."""
    rates = np.asarray(rates, dtype=np.float64)
    n = len(theta)
    g_theta, g_rates = np.zeros(n), np.zeros(n)
    for task in tasks:
        H = task.A.T @ task.A
        path = _inner_path(task, theta, rates, steps)
        step_jacobian = np.eye(n) - rates[:, None] * H  # ∂θ_{k+1}/∂θ_k = I − D H
        d_theta, d_rates = np.eye(n), np.zeros((n, n))
        for theta_k in path[:-1]:
            inner_grad = H @ theta_k - task.A.T @ task.b
            d_rates = step_jacobian @ d_rates - np.diag(inner_grad)
            d_theta = step_jacobian @ d_theta
        g_query = _query_grad(task, path[-1])
        g_theta += d_theta.T @ g_query
        g_rates += d_rates.T @ g_query
    return g_theta / len(tasks), g_rates / len(tasks)


def reptile_meta_gradient(
    tasks: Sequence[LinearTask], theta: np.ndarray, inner_lr: float, steps: int
) -> np.ndarray:
    """Reptile's direction: mean over tasks of θ − θₙ."""
    rates = np.full(len(theta), inner_lr)
    return np.mean([theta - _inner_path(t, theta, rates, steps)[-1] for t in tasks], axis=0)


def _meta_loss(algo: MetaLearner, tasks: Sequence[Any]) -> float:
    total = 0.0
    for task in tasks:
        with algo.adapt(task) as adapted:
            total += task.query_loss(adapted).item()
    return total / len(tasks)


def check_meta_gradient(
    algo: MetaLearner,
    tasks: Sequence[Any],
    *,
    method: str = "finite_differences",
    eps: float = 1e-6,
    rtol: float = 1e-5,
    atol: float = 1e-8,
) -> None:
    """Assert ``algo.meta_backward(tasks)`` matches central finite differences of the meta-loss.

    The meta-loss is (1/B) Σᵢ L^q_i(θ'_i) evaluated through ``algo.adapt``; each entry of each
    meta-parameter (θ, and Meta-SGD's rates) is perturbed by ±eps. Use a float64 model and
    deterministic tasks. Only exact meta-gradients have a finite-difference reference: second-order
    MAML and Meta-SGD (first-order MAML and Reptile are checked against the closed forms).

    Raises:
        AssertionError: naming the parameter, the worst entry and both values.
        ValueError: for an algorithm without an exact meta-gradient, or a non-float64 model.
    """
    if method != "finite_differences":
        raise ValueError(f"method must be 'finite_differences', got {method!r}")
    if not isinstance(algo, MAML) or algo.first_order:
        raise ValueError(
            f"{algo!r} has no exact meta-gradient to compare with finite differences; "
            "check first-order MAML and Reptile against the closed forms instead"
        )
    params = algo.meta_parameters()
    if any(p.dtype != torch.float64 for p in params):
        raise ValueError("check_meta_gradient needs a float64 model (call model.double())")
    names = _names(algo)
    for p in params:
        p.grad = None
    algo.meta_backward(tasks)
    analytic = [
        p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p) for p in params
    ]
    for p in params:
        p.grad = None
    for p, grad, name in zip(params, analytic, names, strict=True):
        numeric = torch.zeros_like(p)
        flat = p.data.view(-1)
        for i in range(flat.numel()):
            original = flat[i].item()
            flat[i] = original + eps
            plus = _meta_loss(algo, tasks)
            flat[i] = original - eps
            minus = _meta_loss(algo, tasks)
            flat[i] = original
            numeric.view(-1)[i] = (plus - minus) / (2 * eps)
        error = (grad - numeric).abs()
        bound = atol + rtol * numeric.abs()
        if bool((error > bound).any()):
            worst = int(torch.argmax(error - bound))
            index = (
                tuple(int(i) for i in np.unravel_index(worst, tuple(p.shape))) if p.dim() else ()
            )
            raise AssertionError(
                f"meta-gradient of {name}{list(index) if index else ''} is "
                f"{grad.view(-1)[worst].item():.10g}, finite differences give "
                f"{numeric.view(-1)[worst].item():.10g} (|diff| {error.view(-1)[worst].item():.3g} > "
                f"atol {atol:g} + rtol {rtol:g} · |fd|)"
            )


def _names(algo: MetaLearner) -> list[str]:
    names = [n for n, p in algo.model.named_parameters() if p.requires_grad]
    if isinstance(algo, MetaSGD):
        names += [
            f"inner_lrs[{n}]"
            for (n, p), rate in zip(algo.model.named_parameters(), algo.inner_lrs, strict=True)
            if rate.requires_grad
        ]
    return names


def _snapshot(model: nn.Module, optimizer: torchopt.MetaOptimizer | None) -> dict[str, Any]:
    state = {
        "param_ids": [id(p) for p in model.parameters()],
        "params": {n: p.detach().clone() for n, p in model.named_parameters()},
        "buffers": {n: b.detach().clone() for n, b in model.named_buffers()},
        "modes": [m.training for m in model.modules()],
    }
    if optimizer is not None:
        leaves: list[Any] = torchopt.pytree.tree_leaves(optimizer.state_dict())  # type: ignore[arg-type]
        state["optimizer"] = [
            leaf.detach().clone() if isinstance(leaf, torch.Tensor) else leaf for leaf in leaves
        ]
    return state


def assert_state_restored(
    model: nn.Module, optimizer: torchopt.MetaOptimizer | None, fn: Callable[[], object]
) -> None:
    """Run ``fn()`` and assert ``model`` and ``optimizer`` are bit-identical afterwards.

    Checks the identity of the parameter objects, every parameter and buffer value (bitwise, NaN
    included), train/eval modes and every tensor of the optimiser's state. An exception from
    ``fn`` propagates and skips the check: to test restoration after an exception, catch it
    inside ``fn``.
    """
    before = _snapshot(model, optimizer)
    fn()
    after = _snapshot(model, optimizer)
    if before["param_ids"] != after["param_ids"]:
        raise AssertionError("model.parameters() are not the original Parameter objects")
    for kind in ("params", "buffers"):
        for name, old in before[kind].items():
            new = after[kind].get(name)
            if new is None or not _bitwise_equal(old, new):
                raise AssertionError(f"{kind[:-1]} {name!r} changed")
    if before["modes"] != after["modes"]:
        raise AssertionError("train/eval mode of a submodule changed")
    if "optimizer" in before:
        old_leaves, new_leaves = before["optimizer"], after["optimizer"]
        same = len(old_leaves) == len(new_leaves) and all(
            _bitwise_equal(a, b) if isinstance(a, torch.Tensor) else a == b
            for a, b in zip(old_leaves, new_leaves, strict=True)
        )
        if not same:
            raise AssertionError("optimizer state changed")


def _bitwise_equal(a: Any, b: Any) -> bool:
    if not isinstance(b, torch.Tensor) or a.shape != b.shape or a.dtype != b.dtype:
        return False
    if a.is_floating_point():  # compare bits, so that NaN == NaN and -0.0 != 0.0
        a, b = a.reshape(-1).view(torch.uint8), b.reshape(-1).view(torch.uint8)
    return bool(torch.equal(a, b))
