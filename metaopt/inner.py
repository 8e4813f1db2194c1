"""Differentiable inner-loop optimisers, built on TorchOpt.

``InnerOptimizer`` is TorchOpt's ``MetaOptimizer`` (the class behind ``torchopt.MetaSGD`` and
``torchopt.MetaAdam``) with one addition: ``step(loss, create_graph=False)`` takes the inner
gradient without a graph. The update θ' = θ + u(g) is then still a differentiable function of θ
(with Jacobian I, as g is a constant), which is exactly first-order MAML; ``torchopt.stop_gradient``
would instead cut θ' off from θ and leave no meta-gradient at all.

``learned_rate_sgd`` is the update of Li et al.'s Meta-SGD: a per-parameter, per-entry learning
rate α with the shape of θ, u = −α ∘ g. (TorchOpt's ``MetaSGD`` is plain differentiable SGD with
one scalar rate; the two share a name and nothing else.)

``adam`` is TorchOpt's differentiable Adam with its bias correction 1 − βᵗ computed in float64 and
rounded once to the parameters' dtype; TorchOpt computes it in float32, which puts a float64 inner
loop about 1e-5 (relative) off the textbook update.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
import torchopt
from torch import nn
from torchopt import pytree
from torchopt.base import EmptyState, GradientTransformation, UninitializedState
from torchopt.utils import extract_module_containers

from metaopt.options import INNER_OPTIMIZERS

__all__ = [
    "INNER_OPTIMIZERS",
    "AdamState",
    "InnerOptimizer",
    "adam",
    "inner_transform",
    "learned_rate_sgd",
    "per_step_rate_sgd",
    "plain_sgd",
    "positive_rates",
    "softplus_inverse",
    "torchopt_order",
]


#: Adam's ε inside the square root. TorchOpt's default of 0 makes d/dv sqrt(v) infinite where the
#: second moment is 0, and the meta-gradient turns NaN after a few inner steps.
ADAM_EPS_ROOT = 1e-8


def inner_transform(name: str, lr: float) -> GradientTransformation:
    """The functional optimiser ``name`` at learning rate ``lr``: ``"sgd"``, TorchOpt's SGD step
    written on tuples (`plain_sgd`, the same operation), or ``"adam"`` (`adam`)."""
    if name == "sgd":
        return plain_sgd(lr)
    if name == "adam":
        return adam(lr)
    raise ValueError(f"inner_optimizer must be one of {', '.join(INNER_OPTIMIZERS)}; got {name!r}")


class AdamState(NamedTuple):
    """Adam's moments and step counts, one entry per parameter (a count per parameter, as in
    TorchOpt: a parameter whose gradient is ``None`` at a step keeps its moments and its count)."""

    mu: tuple[torch.Tensor, ...]
    nu: tuple[torch.Tensor, ...]
    steps: tuple[torch.Tensor, ...]


def adam(
    lr: float,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    eps_root: float = ADAM_EPS_ROOT,
) -> GradientTransformation:
    r"""Differentiable Adam (Kingma & Ba, 2015), the update of ``torchopt.adam``:

    $$
    m_t = β_1 m_{t-1} + (1-β_1) g,\quad v_t = β_2 v_{t-1} + (1-β_2) g^2,\quad
    u = -\mathrm{lr}\,\frac{m_t / (1-β_1^t)}{\sqrt{v_t / (1-β_2^t) + ε_{root}} + ε}.
    $$

    The moments keep their graph, so a meta-gradient flows through them. The bias corrections
    $1-β^t$ are computed in float64 and rounded once to the parameters' dtype (TorchOpt
    rounds β to float32 first: 0.00099998713 instead of 0.001 at the first step). In float32 the
    result equals ``torchopt.MetaAdam``'s wherever TorchOpt's float32 correction is exact.

    With ``eps_root=0`` this is ``torch.optim.Adam``'s step, and the square root's derivative at
    $v = 0$ (a gradient entry that has been exactly 0 at every step) is taken as 0, its
    subgradient, instead of TorchOpt's ∞ · 0 = NaN.

    Args:
        lr: Learning rate.
        betas: Decay rates of the first and second moments.
        eps: Added to the root of the second moment.
        eps_root: Added inside the root (metaopt's default 1e-8 keeps the numbers of earlier
            releases, which ran TorchOpt's Adam with it).
    """
    b1, b2 = betas

    def init(params: Sequence[torch.Tensor]) -> AdamState:
        counts = tuple(torch.zeros((), dtype=torch.int64, device=p.device) for p in params)
        return AdamState(
            mu=tuple(torch.zeros_like(p) for p in params),
            nu=tuple(torch.zeros_like(p) for p in params),
            steps=counts,
        )

    def correction(beta: float, count: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return (1.0 - torch.pow(beta, count.to(torch.float64))).to(like.dtype)

    def root(v: torch.Tensor) -> torch.Tensor:
        if eps_root > 0:
            return (v + eps_root).sqrt()
        positive = v > 0
        return torch.where(positive, torch.where(positive, v, 1.0).sqrt(), 0.0)

    def update(
        updates: Sequence[torch.Tensor | None],
        state: AdamState,
        *,
        params: object = None,
        inplace: bool = True,
    ) -> tuple[tuple[torch.Tensor | None, ...], AdamState]:
        out: list[torch.Tensor | None] = []
        mus, nus, counts = [], [], []
        for g, mu, nu, count in zip(updates, state.mu, state.nu, state.steps, strict=True):
            if g is None:
                out.append(None)
                mus.append(mu)
                nus.append(nu)
                counts.append(count)
                continue
            if g.is_sparse:
                raise TypeError(
                    "inner_optimizer='adam' cannot take sparse gradients (an nn.Embedding with "
                    "sparse=True?): use inner_optimizer='sgd' or sparse=False"
                )
            mu = mu.mul(b1).add(g, alpha=1 - b1)
            nu = nu.mul(b2).addcmul(g, g, value=1 - b2)
            count = count + 1
            mu_hat = mu.div(correction(b1, count, mu))
            nu_hat = nu.div(correction(b2, count, nu))
            out.append(mu_hat.div(root(nu_hat).add(eps)).mul(-lr))
            mus.append(mu)
            nus.append(nu)
            counts.append(count)
        return tuple(out), AdamState(tuple(mus), tuple(nus), tuple(counts))

    return GradientTransformation(init, update)


def plain_sgd(lr: float) -> GradientTransformation:
    """``torchopt.sgd(lr)``'s update u = g · (−lr), the same operation, on a tuple of tensors.

    TorchOpt maps its update over the gradients with ``optree``; traced by ``torch.compile``
    (the compiled engine), that leaves dozens of guards on optree's node registry and TorchOpt's
    closures to evaluate on every call. This one has no state and no tree to walk.
    """
    step = -lr

    def init(params: object) -> EmptyState:
        return EmptyState()

    def update(
        updates: Sequence[torch.Tensor | None], state: EmptyState, **_: object
    ) -> tuple[tuple[torch.Tensor | None, ...], EmptyState]:
        return tuple(None if g is None else g.mul(step) for g in updates), state

    return GradientTransformation(init, update)


def learned_rate_sgd(
    rates: Sequence[torch.Tensor], *, positive: bool = False
) -> GradientTransformation:
    """Meta-SGD's inner update u = −α ∘ g with one learnable rate tensor per parameter.

    Li et al. (2017), "Meta-SGD: Learning to Learn Quickly for Few-Shot Learning": θ' = θ − α ∘ ∇L(θ),
    with α the shape of θ and meta-learned together with θ.

    Args:
        rates: One tensor per parameter, in the order in which ``update`` receives gradients:
            ``parameters()`` order under [`InnerOptimizer`][metaopt.InnerOptimizer] and the
            vectorised engine (a plain ``torchopt.MetaOptimizer`` needs `torchopt_order`).
        positive: The tensors are unconstrained ρ and the rates are α = softplus(ρ) =
            log(1 + e^ρ) > 0 (`positive_rates`), computed at every step so that the
            meta-gradient reaches ρ (dα/dρ = sigmoid(ρ)). Default: the tensors are α itself.
    """
    rates = tuple(rates)

    def init(params: object) -> EmptyState:
        return EmptyState()

    def update(
        updates: Sequence[torch.Tensor | None], state: EmptyState, **_: object
    ) -> tuple[tuple[torch.Tensor | None, ...], EmptyState]:
        # The step needs neither the parameters nor in-place updates (``params``, ``inplace``).
        if len(updates) != len(rates):
            raise ValueError(
                f"Meta-SGD has {len(rates)} learning rates but got {len(updates)} grads"
            )
        alphas = positive_rates(rates) if positive else rates
        return tuple(
            None if g is None else -a * g for a, g in zip(alphas, updates, strict=True)
        ), state

    return GradientTransformation(init, update)


class StepCount(NamedTuple):
    """The inner steps taken so far (a Python number: the same for every task of a meta-batch,
    and a constant where the compiled engine traces the unrolled loop)."""

    step: int


def per_step_rate_sgd(rates: Sequence[torch.Tensor]) -> GradientTransformation:
    """SGD with a learned rate per parameter tensor and per inner step: step k updates parameter
    i by u = −α_{i,k} g, with ``rates[i]`` the vector ``[α_{i,0}, ..., α_{i,K-1}]`` (a step past
    the last one reuses α_{i,K-1}).

    MAML++'s learned per-layer per-step learning rates, LSLR (Antoniou et al., 2019, §4,
    "Learning Per-Layer Per-Step Learning Rates and Gradient Directions").

    Args:
        rates: One vector ``[K]`` per parameter, in the order in which ``update`` receives
            gradients (``parameters()`` order, as `learned_rate_sgd`'s).
    """
    rates = tuple(rates)

    def init(params: object) -> StepCount:
        return StepCount(0)

    def update(
        updates: Sequence[torch.Tensor | None], state: StepCount, **_: object
    ) -> tuple[tuple[torch.Tensor | None, ...], StepCount]:
        if len(updates) != len(rates):
            raise ValueError(f"{len(rates)} per-step rates but {len(updates)} grads")
        k = state.step
        moved = tuple(
            None if g is None else -a[min(k, a.shape[0] - 1)] * g
            for a, g in zip(rates, updates, strict=True)
        )
        return moved, StepCount(k + 1)

    return GradientTransformation(init, update)


def positive_rates(raw: Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
    """Meta-SGD's positive rates α = softplus(ρ) = log(1 + e^ρ) of unconstrained ρ
    (differentiable: dα/dρ = sigmoid(ρ))."""
    return tuple(nn.functional.softplus(r) for r in raw)


def softplus_inverse(alpha: float) -> float:
    """ρ with softplus(ρ) = ``alpha`` > 0: the raw value at which a positive rate starts."""
    return alpha + math.log(-math.expm1(-alpha))


def _flatten(containers: object) -> tuple[tuple[torch.Tensor, ...], Any]:
    flat: tuple[torch.Tensor, ...]
    flat, treespec = pytree.tree_flatten_as_tuple(containers)  # type: ignore[arg-type]
    return flat, treespec


def _distinct(flat: Sequence[torch.Tensor]) -> tuple[list[int], list[int]]:
    """Positions of the distinct tensors in ``flat`` (first occurrences), and for every position
    the index of its tensor among the distinct ones."""
    first: dict[int, int] = {}
    positions: list[int] = []
    slots: list[int] = []
    for position, tensor in enumerate(flat):
        if id(tensor) not in first:
            first[id(tensor)] = len(positions)
            positions.append(position)
        slots.append(first[id(tensor)])
    return positions, slots


def torchopt_order(model: nn.Module) -> list[int]:
    """The order in which a plain ``torchopt.MetaOptimizer`` updates parameters: indices into
    ``parameters()`` ([`InnerOptimizer`][metaopt.InnerOptimizer] uses ``parameters()`` order
    itself).

    TorchOpt flattens each submodule's parameter dict with sorted keys (``bias`` before
    ``weight``), not in ``parameters()`` order; per-parameter state such as Meta-SGD's rates has
    to be handed over in this order. A parameter that two submodules share counts once, at its
    first place.
    """
    index = {id(p): i for i, p in enumerate(model.parameters())}
    flat, _ = _flatten(extract_module_containers(model, with_buffers=False)[0])
    positions, _ = _distinct(flat)
    return [index[id(flat[position])] for position in positions]


class InnerOptimizer(torchopt.MetaOptimizer):
    """TorchOpt's differentiable ``MetaOptimizer`` with first-order steps, frozen and tied parameters.

    The transformation receives one gradient per parameter in ``module.parameters()`` order
    (``None`` for a frozen one), whatever order TorchOpt keeps its containers in, so that
    per-parameter state such as Meta-SGD's rates lines up with ``parameters()``.

    With ``create_graph=True`` a step is exactly ``torchopt.MetaSGD`` / ``torchopt.MetaAdam``'s
    (tested). Parameters with ``requires_grad=False`` at the time of a step (frozen before or
    after the optimiser was built) are left as they are, and so are parameters the loss does not
    use. A parameter that several submodules share (``b.weight = a.weight``) is updated once, by
    its whole gradient, and the one new tensor goes back to every submodule; TorchOpt's own step
    would update each place separately and untie them. ``adapted`` (one flag per parameter in
    ``parameters()`` order; ``None``: all) leaves the unflagged parameters as they are, as if
    frozen (ANIL's body, `metaopt.algorithms.subset`).
    """

    def __init__(
        self,
        module: nn.Module,
        impl: GradientTransformation,
        adapted: Sequence[bool] | None = None,
    ) -> None:
        super().__init__(module, impl)
        self._adapted = None if adapted is None else list(adapted)
        flat, _ = _flatten(self.param_containers_groups[0])
        positions, slots = _distinct(flat)
        # ``impl`` sees the parameters in ``parameters()`` order, the order of the vectorised
        # engine and of Meta-SGD's rates, rather than TorchOpt's (sorted keys per submodule).
        distinct = {id(flat[position]): k for k, position in enumerate(positions)}
        order = [distinct[id(p)] for p in module.parameters()]
        place = {k: i for i, k in enumerate(order)}
        self._gather = [positions[k] for k in order]
        self._scatter = [place[slot] for slot in slots]

    def step(self, loss: torch.Tensor, *, create_graph: bool = True) -> None:
        """Replace the module's parameters by their updated values θ' = θ + u(∇loss).

        Args:
            loss: Scalar loss at the current parameters.
            create_graph: Keep the graph of the gradient, so that a later backward through θ'
                includes second-order terms (MAML). ``False`` gives first-order MAML.
        """
        for i, (containers, state) in enumerate(
            zip(self.param_containers_groups, self.state_groups, strict=True)
        ):
            flat, treespec = _flatten(containers)
            params = tuple(flat[position] for position in self._gather)
            if isinstance(state, UninitializedState):
                state = self.impl.init(params)
            trainable = [p.requires_grad for p in params]
            if self._adapted is not None:
                trainable = [t and a for t, a in zip(trainable, self._adapted, strict=True)]
            wanted = [p for p, t in zip(params, trainable, strict=True) if t]
            found = iter(
                torch.autograd.grad(loss, wanted, create_graph=create_graph, allow_unused=True)
            )
            grads = tuple(next(found) if t else None for t in trainable)
            updates, self.state_groups[i] = self.impl.update(
                grads, state, params=params, inplace=False
            )
            new = torchopt.apply_updates(params, updates, inplace=False)
            new_flat = tuple(new[i] for i in self._scatter)
            new_containers = pytree.tree_unflatten(treespec, new_flat)
            for container, values in zip(containers, new_containers, strict=True):
                container.update(values)  # type: ignore[arg-type]
