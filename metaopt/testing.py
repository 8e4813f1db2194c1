r"""Helpers for verifying meta-gradients in your own tests.

* Linear least-squares tasks with closed-form meta-gradients of every algorithm. With support loss
  $\tfrac12\|A\theta-b\|^2$ (Hessian $H = A^\top A$), query loss
  $\tfrac12\|C\theta-d\|^2$ and n inner SGD steps $\theta_{k+1} = \theta_k - D\,
  (H\theta_k - A^\top b)$ with $D = \operatorname{diag}(\alpha)$:

  - MAML: $(I - H D)^n\, g_q$ with $g_q = C^\top(C\theta_n - d)$ (D = αI);
  - first-order MAML: $g_q$;
  - Meta-SGD, for θ as MAML with D = diag(α); for α: $J_n^\top g_q$ with
    $J_0 = 0$, $J_{k+1} = (I - DH)J_k - \operatorname{diag}(H\theta_k - A^\top b)$
    (first-order Meta-SGD: I in place of I − DH and of I − HD);
  - Reptile: $\theta - \theta_n$;

  each averaged over the tasks. Computed in NumPy float64, independently of autograd.
* [`check_meta_gradient`][metaopt.testing.check_meta_gradient]: an algorithm's ``meta_backward``
  (a learner, or any registered algorithm by name) against central finite differences of the
  meta-loss (``method="finite_differences"``, any float64 model, exact meta-gradients only), or
  against the closed forms above (``method="closed_form"``, linear least-squares tasks: MAML,
  first-order MAML, Meta-SGD and Reptile).
* [`assert_state_restored`][metaopt.testing.assert_state_restored]: run a function, assert the model
  and optimiser are bit-identical.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torchopt
from torch import nn

from metaopt.algorithms import MetaLearner
from metaopt.registry import build_learner

__all__ = [
    "CHECK_METHODS",
    "LinearModel",
    "LinearTask",
    "LinearTaskBatch",
    "assert_state_restored",
    "check_meta_gradient",
    "fomaml_meta_gradient",
    "imaml_meta_gradient",
    "maml_meta_gradient",
    "metasgd_meta_gradient",
    "random_linear_tasks",
    "reptile_meta_gradient",
]


class LinearModel(nn.Module):
    """``forward(M) = M θ``, θ split over two parameters named so that TorchOpt's order (bias,
    weight) differs from ``parameters()`` order (weight, bias); θ is flat in ``parameters()`` order.
    """

    def __init__(self, theta: np.ndarray, split: int | None = None) -> None:
        super().__init__()
        theta = np.asarray(theta, dtype=np.float64)
        split = len(theta) // 2 if split is None else split
        self.weight = nn.Parameter(torch.as_tensor(theta[:split].copy()))
        self.bias = nn.Parameter(torch.as_tensor(theta[split:].copy()))

    def forward(self, M: torch.Tensor) -> torch.Tensor:
        return M @ torch.cat([self.weight, self.bias])


@dataclass
class LinearTask:
    """Least squares: support ½‖Aθ − b‖², query ½‖Cθ − d‖² for a
    [`LinearModel`][metaopt.testing.LinearModel]."""

    A: np.ndarray
    b: np.ndarray
    C: np.ndarray
    d: np.ndarray

    def _loss(self, model: nn.Module, M: np.ndarray, y: np.ndarray) -> torch.Tensor:
        dtype = next(model.parameters()).dtype
        residual = model(torch.as_tensor(M, dtype=dtype)) - torch.as_tensor(y, dtype=dtype)
        return 0.5 * (residual**2).sum()

    def support_loss(self, model: nn.Module) -> torch.Tensor:
        """½‖Aθ − b‖²."""
        return self._loss(model, self.A, self.b)

    def query_loss(self, model: nn.Module) -> torch.Tensor:
        """½‖Cθ − d‖²."""
        return self._loss(model, self.C, self.d)


class LinearTaskBatch(list[LinearTask]):
    """Linear tasks stacked for the vectorised engine
    ([`metaopt.task.BatchedTasks`][metaopt.BatchedTasks]).

    Still a list of [`LinearTask`][metaopt.testing.LinearTask], so the loop engine runs the same
    batch.
    """

    def _stacked(self, name: str) -> torch.Tensor:
        return torch.as_tensor(np.stack([getattr(task, name) for task in self]))

    def select(self, indices: slice) -> LinearTaskBatch:
        """The tasks ``indices`` as a batch (a shard of the meta-batch)."""
        return LinearTaskBatch(self[indices])

    def support_losses(self, forward: Any, step: int | None) -> torch.Tensor:
        """½‖A_i θ_i − b_i‖² for every task i, ``[B]``."""
        return 0.5 * ((forward(self._stacked("A")) - self._stacked("b")) ** 2).sum(-1)

    def query_losses(self, forward: Any) -> torch.Tensor:
        """½‖C_i θ_i − d_i‖² for every task i, ``[B]``."""
        return 0.5 * ((forward(self._stacked("C")) - self._stacked("d")) ** 2).sum(-1)


def random_linear_tasks(
    num_tasks: int, dim: int, rng: np.random.Generator, rows: int = 6
) -> LinearTaskBatch:
    """Well-conditioned random least-squares tasks (entries ~ N(0, 1/rows)), as a batch."""
    scale = 1.0 / np.sqrt(rows)
    return LinearTaskBatch(
        LinearTask(
            A=rng.normal(0.0, scale, (rows, dim)),
            b=rng.normal(size=rows),
            C=rng.normal(0.0, scale, (rows, dim)),
            d=rng.normal(size=rows),
        )
        for _ in range(num_tasks)
    )


def _inner_path(task: LinearTask, theta: np.ndarray, rates: np.ndarray, steps: int) -> list:
    path = [np.asarray(theta, dtype=np.float64)]
    for _ in range(steps):
        grad = task.A.T @ (task.A @ path[-1] - task.b)
        path.append(path[-1] - rates * grad)
    return path


def _query_grad(task: LinearTask, theta: np.ndarray) -> np.ndarray:
    return task.C.T @ (task.C @ theta - task.d)


def maml_meta_gradient(
    tasks: Sequence[LinearTask], theta: np.ndarray, inner_lr: float | np.ndarray, steps: int
) -> np.ndarray:
    """Second-order MAML: mean over tasks of (I − αH)ⁿ ∇L_q(θₙ).

    ``inner_lr`` (here and in the other scalar-rate closed forms) may also be one rate per entry
    of θ: 0 for an entry the inner loop does not adapt gives ANIL (``adapt=``).
    """
    rates = np.full(len(theta), inner_lr)
    return metasgd_meta_gradient(tasks, theta, rates, steps)[0]


def fomaml_meta_gradient(
    tasks: Sequence[LinearTask], theta: np.ndarray, inner_lr: float | np.ndarray, steps: int
) -> np.ndarray:
    """First-order MAML: mean over tasks of ∇L_q(θₙ)."""
    rates = np.full(len(theta), inner_lr)
    return np.mean([_query_grad(t, _inner_path(t, theta, rates, steps)[-1]) for t in tasks], axis=0)


def metasgd_meta_gradient(
    tasks: Sequence[LinearTask],
    theta: np.ndarray,
    rates: np.ndarray,
    steps: int,
    *,
    first_order: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Meta-SGD: the meta-gradients for θ and for the per-entry rates α (flat, θ's layout).

    With ``first_order`` the inner gradients are constants: ∂θₖ₊₁/∂θₖ = I, so the θ-part is
    first-order MAML's and the α-part is −Σₖ ∇L_s(θₖ) ∘ ∇L_q(θₙ).
    """
    rates = np.asarray(rates, dtype=np.float64)
    n = len(theta)
    g_theta, g_rates = np.zeros(n), np.zeros(n)
    for task in tasks:
        H = task.A.T @ task.A
        path = _inner_path(task, theta, rates, steps)
        # ∂θ_{k+1}/∂θ_k = I − D H (I when the inner gradient is a constant)
        step_jacobian = np.eye(n) if first_order else np.eye(n) - rates[:, None] * H
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
    tasks: Sequence[LinearTask], theta: np.ndarray, inner_lr: float | np.ndarray, steps: int
) -> np.ndarray:
    """Reptile's direction: mean over tasks of θ − θₙ."""
    rates = np.full(len(theta), inner_lr)
    return np.mean([theta - _inner_path(t, theta, rates, steps)[-1] for t in tasks], axis=0)


def imaml_meta_gradient(
    tasks: Sequence[LinearTask], theta: np.ndarray, reg: float, mask: np.ndarray | None = None
) -> np.ndarray:
    """iMAML with the regularised inner problem solved exactly: mean over tasks of
    (I + H/λ)⁻¹ ∇L_q(φ*), φ* = (H + λI)⁻¹(Aᵀb + λθ). With ``mask`` (1 for an adapted entry, 0
    else: ANIL) only the block a is solved for, at θ of the rest b; then θ_a gets
    λ(H_aa + λI)⁻¹ g_a and θ_b gets g_b − H_ba (H_aa + λI)⁻¹ g_a. This is the exact gradient of
    the meta-loss L_q(φ*(θ)), so iMAML's formula has no approximation here."""
    a = np.ones(len(theta), bool) if mask is None else np.asarray(mask) > 0
    total = np.zeros(len(theta))
    for task in tasks:
        H = task.A.T @ task.A
        solve = np.linalg.inv(H[np.ix_(a, a)] + reg * np.eye(int(a.sum())))
        phi = np.array(theta, dtype=np.float64)
        phi[a] = solve @ (task.A[:, a].T @ (task.b - task.A[:, ~a] @ theta[~a]) + reg * theta[a])
        g = _query_grad(task, phi)
        grad = g.copy()
        grad[a] = reg * solve @ g[a]
        grad[~a] = g[~a] - H[np.ix_(~a, a)] @ solve @ g[a]
        total += grad
    return total / len(tasks)


#: The closed forms of the algorithms with one scalar inner learning rate, by ``algo.name``.
_SCALAR_RATE_CLOSED_FORMS: dict[str, Callable[..., np.ndarray]] = {
    "maml": maml_meta_gradient,
    "fomaml": fomaml_meta_gradient,
    "reptile": reptile_meta_gradient,
}


def _meta_loss(algo: MetaLearner, tasks: Sequence[Any]) -> float:
    total = 0.0
    for task in tasks:
        with algo.adapt(task) as adapted:
            total += task.query_loss(adapted).item()
    return total / len(tasks)


#: What `check_meta_gradient` can compare with.
CHECK_METHODS = ("finite_differences", "closed_form")


def check_meta_gradient(
    algo: MetaLearner | str,
    tasks: Sequence[Any],
    *,
    method: str = "finite_differences",
    eps: float = 1e-6,
    rtol: float = 1e-5,
    atol: float = 1e-8,
    model: nn.Module | None = None,
    **settings: Any,
) -> None:
    """Assert that ``algo.meta_backward(tasks)`` matches an independent reference.

    ``algo`` is a learner, or the name of any algorithm the registry knows (built-in, plug-in or
    registered: `metaopt.registry`), built around ``model`` with ``settings`` (``inner_lr=``,
    ``inner_steps=`` and its options, as `metaopt.registry.build_learner` takes them).

    ``method="finite_differences"``: central finite differences of the meta-loss
    (1/B) Σᵢ L^q_i(θ'_i), evaluated through ``algo.adapt``; each entry of each meta-parameter (θ,
    and Meta-SGD's rates) is perturbed by ±eps. Use a float64 model and deterministic tasks. Only
    exact meta-gradients have a finite-difference reference: second-order MAML and Meta-SGD.

    ``method="closed_form"``: the NumPy closed forms of this module, for every algorithm
    (first-order MAML and Reptile included) on [`LinearTask`][metaopt.testing.LinearTask] tasks with
    a model whose flattened parameters are θ (such as [`LinearModel`][metaopt.testing.LinearModel]),
    inner optimiser SGD.

    ``.grad`` of the meta-parameters is overwritten and left at ``None``.

    Raises:
        AssertionError: naming the parameter, the worst entry and both values.
        ValueError: for an unknown method, a non-float64 model, an algorithm without an exact
            meta-gradient (finite differences), or tasks and models the closed forms do not
            cover.
    """
    if method not in CHECK_METHODS:
        raise ValueError(f"method must be one of {', '.join(CHECK_METHODS)}; got {method!r}")
    if isinstance(algo, str):
        if model is None:
            raise ValueError(f"check_meta_gradient({algo!r}, ...) needs the model= to build it on")
        algo = build_learner(algo, model, **settings)
    elif model is not None or settings:
        raise ValueError("model= and the algorithm's settings go with an algorithm's name only")
    if method == "finite_differences" and not algo.exact_meta_gradient:
        raise ValueError(
            f"{algo!r} has no exact meta-gradient to compare with finite differences; "
            "check first-order MAML and Reptile with method='closed_form' instead"
        )
    params = algo.meta_parameters()
    if any(p.dtype != torch.float64 for p in params):
        raise ValueError("check_meta_gradient needs a float64 model (call model.double())")
    names = _names(algo)
    if method == "closed_form":  # before meta_backward, so that unsupported input fails cleanly
        references = _closed_form(algo, tasks)
        label, short = "the closed form gives", "ref"
    for p in params:
        p.grad = None
    algo.meta_backward(tasks)
    analytic = [
        p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p) for p in params
    ]
    for p in params:
        p.grad = None
    if method == "finite_differences":
        references = [_finite_differences(algo, tasks, p, eps) for p in params]
        label, short = "finite differences give", "fd"
    for p, grad, reference, name in zip(params, analytic, references, names, strict=True):
        _assert_entries_close(name, p, grad, reference, rtol, atol, label, short)


def _finite_differences(
    algo: MetaLearner, tasks: Sequence[Any], p: torch.Tensor, eps: float
) -> torch.Tensor:
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
    return numeric


def _closed_form(algo: MetaLearner, tasks: Sequence[Any]) -> list[torch.Tensor]:
    """The closed-form meta-gradient of ``algo`` on linear tasks, one tensor per meta-parameter."""
    tasks = list(tasks)
    if not tasks or not all(isinstance(t, LinearTask) for t in tasks):
        raise ValueError("method='closed_form' needs a non-empty sequence of LinearTask tasks")
    model_params = list(algo.model.parameters())
    if not all(p.requires_grad for p in model_params):
        raise ValueError("method='closed_form' needs every model parameter trainable")
    rates = algo.inner_sgd_rates()
    if algo.name == "imaml":  # φ* solved exactly: the reference of the converged algorithm
        rates = 0.0
    elif rates is None:
        raise ValueError(
            f"method='closed_form' covers inner SGD only, not {algo.describe()['rule']!r}"
        )
    theta = torch.cat([p.detach().reshape(-1) for p in model_params]).double().numpy()
    # ANIL (adapt=): an entry the inner loop does not adapt has inner rate 0 in every closed form.
    adapted = [algo.adapted is None or n in algo.adapted for n, _ in algo.model.named_parameters()]
    mask = np.concatenate(
        [np.full(p.numel(), float(a)) for p, a in zip(model_params, adapted, strict=True)]
    )
    if any(t.A.shape[1] != len(theta) or t.C.shape[1] != len(theta) for t in tasks):
        raise ValueError(f"the tasks' matrices do not have {len(theta)} columns (θ's size)")
    steps = algo.inner_steps
    if isinstance(rates, list):  # learned per-parameter rates: Meta-SGD
        alpha = torch.cat([a.reshape(-1) for a in rates]).double().numpy() * mask
        g_theta, g_rates = metasgd_meta_gradient(
            tasks, theta, alpha, steps, first_order=not algo.exact_meta_gradient
        )
        if "softplus" in algo.describe().get("rates", ""):  # α = softplus(ρ): dα/dρ = sigmoid(ρ)
            raw = torch.cat([r.detach().reshape(-1) for r in algo.rate_parameters()]).double()
            g_rates = g_rates * torch.sigmoid(raw).numpy()
        flat = np.concatenate([g_theta, g_rates[mask > 0]])  # only adapted rates are learned
    elif algo.name == "imaml":
        flat = imaml_meta_gradient(tasks, theta, algo.describe()["reg"], mask)
    elif algo.name in _SCALAR_RATE_CLOSED_FORMS:
        flat = _SCALAR_RATE_CLOSED_FORMS[algo.name](tasks, theta, rates * mask, steps)
    else:
        raise ValueError(f"no closed form for {algo.name!r}")
    out, start = [], 0
    for p in algo.meta_parameters():
        out.append(torch.as_tensor(flat[start : start + p.numel()]).reshape(p.shape))
        start += p.numel()
    return out


def _assert_entries_close(
    name: str,
    p: torch.Tensor,
    grad: torch.Tensor,
    reference: torch.Tensor,
    rtol: float,
    atol: float,
    label: str,
    short: str,
) -> None:
    """Raise an AssertionError naming ``name`` and its worst entry unless every entry is close."""
    error = (grad - reference).abs()
    bound = atol + rtol * reference.abs()
    if bool((error > bound).any()):
        worst = int(torch.argmax(error - bound))
        index = tuple(int(i) for i in np.unravel_index(worst, tuple(p.shape))) if p.dim() else ()
        raise AssertionError(
            f"meta-gradient of {name}{list(index) if index else ''} is "
            f"{grad.view(-1)[worst].item():.10g}, {label} "
            f"{reference.view(-1)[worst].item():.10g} (|diff| {error.view(-1)[worst].item():.3g} > "
            f"atol {atol:g} + rtol {rtol:g} · |{short}|)"
        )


def _names(algo: MetaLearner) -> list[str]:
    """Names of ``algo.meta_parameters()``: θ's, then the learned rates' (``inner_lrs[name]``) or
    any other learned state's (``learned[i]``)."""
    named = list(algo.model.named_parameters())
    names = [n for n, p in named if p.requires_grad]
    rates = algo.rate_parameters()
    if rates:
        names += [
            f"inner_lrs[{n}]"
            for (n, _), rate in zip(named, rates, strict=True)
            if rate.requires_grad
        ]
    else:
        learned = algo.learned_tensors()
        names += [f"learned[{i}]" for i, t in enumerate(learned) if t.requires_grad]
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
