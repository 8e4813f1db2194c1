"""Checkpointed unrolling: a second-order inner loop whose states are recomputed in the backward
pass instead of stored (binomial checkpointing, Griewank 1992; "revolve").

Second-order MAML differentiates through every inner step. The plain unroll keeps each step's
graph (the per-task parameters, the activations, the inner gradient's own graph) until the outer
backward, so its memory grows linearly with the steps. Here the adaptation runs without a graph
and the outer backward walks the steps in reverse with the adjoint ``v_k = ∂L/∂state_k``:

$$
v_k = v_{k+1} + J_k^\\top v_{k+1},\\qquad
J_k = \\partial u_k / \\partial \\mathrm{state}_k,
$$

where $u_k$ is step k's update (for SGD, $J_k^\\top v = -\\alpha H_k v$, with
$H_k$ the Hessian of the support losses at $\\theta_k$). Each reverse step recomputes
step k from its state with a graph (a fresh double backward at $\\theta_k$), takes one
vector-Jacobian product, and drops that graph. The states $\\theta_k$ themselves come from
checkpoints: at most ``slots`` states are held at once besides θ, and the others are recomputed
from the nearest earlier one. Where to place them is the binomial schedule, found by a small
dynamic programme (`schedule_cost`): with ``slots ≥ steps − 1`` every state is stored once
(``steps − 1`` extra forward steps), with one slot the unroll costs ``steps (steps − 1) / 2``.
Meta-SGD's rates and Adam's moments take part like the parameters (the moments are part of the
state; the rates receive the vector-Jacobian product of every step).

The recomputation must give the same support losses as the first pass: a batch that samples new
data at every call (reinforcement-learning tasks) would make the reverse pass differentiate other
losses than the forward pass descended. Every recomputed step's losses are compared with the
first pass's and a difference raises `UnrollMismatchError`.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from functools import cache
from typing import Any

import torch
from torch import nn
from torchopt import pytree
from torchopt.base import GradientTransformation

from metaopt.batched import Batch, inner_step
from metaopt.engine import Adapted, static_layout
from metaopt.task import BatchedTasks

__all__ = ["UnrollMismatchError", "checkpointed_adapt", "schedule_cost"]

Tensors = tuple[torch.Tensor, ...]


class UnrollMismatchError(RuntimeError):
    """The support losses recomputed in the backward pass differ from the first pass's."""


@cache
def _table(steps: int, slots: int) -> tuple[tuple[tuple[int, int], ...], ...]:
    """``[s][length]``: (forward steps, first split) of the cheapest reversal of ``length`` steps
    whose first state is held, with ``s`` more states holdable at once (revolve's binomial
    schedule, by dynamic programming: advance to the split, hold it, reverse the right part with
    one slot fewer, then the left part with the slot back)."""
    impossible = (1 << 62, 0)
    table = [[impossible, (0, 0)] + [impossible] * (steps - 1)]  # no slot: one step at most
    for s in range(1, slots + 1):
        row = [impossible, (0, 0)]
        for length in range(2, steps + 1):
            row.append(
                min(
                    (split + table[s - 1][length - split][0] + row[split][0], split)
                    for split in range(1, length)
                )
            )
        table.append(row)
    return tuple(tuple(row) for row in table)


def schedule_cost(steps: int, slots: int) -> int:
    """Inner steps taken without a graph by a checkpointed unroll of ``steps`` steps holding at
    most ``slots`` states at once, the first pass included (the plain unroll takes ``steps``,
    with a graph); the reverse pass takes ``steps`` more with a graph, one per vector-Jacobian
    product."""
    slots = max(1, min(slots, steps - 1))
    return _table(steps, slots)[slots][steps][0] + 1


def _schedule(steps: int, slots: int) -> list[tuple[str, int, int]]:
    """The reversal as actions: ``("hold", a, m)`` advance from held state a to m and hold it,
    ``("reverse", k, 0)`` the vector-Jacobian product of step k (state k held), ``("free", m, 0)``.
    """
    slots = max(1, min(slots, steps - 1))
    table = _table(steps, slots)
    actions: list[tuple[str, int, int]] = []
    pending: list[tuple[str, int, int, int]] = [("reverse", 0, steps, slots)]
    while pending:
        what, a, b, s = pending.pop()
        if what == "free":
            actions.append(("free", a, 0))
        elif b - a == 1:
            actions.append(("reverse", a, 0))
        else:
            m = a + table[s][b - a][1]
            actions.append(("hold", a, m))
            pending += [("reverse", a, m, s), ("free", m, 0, 0), ("reverse", m, b, s - 1)]
    return actions


class _Unroll:
    """One meta-batch's inner loop, step by step (`metaopt.engine.inner_step`), with and without a
    graph."""

    def __init__(
        self,
        model: nn.Module,
        tasks: BatchedTasks,
        transform: GradientTransformation,
        *,
        batch_norm: str,
        adapted: Collection[str] | None,
    ) -> None:
        layout = static_layout(model, batch_norm, "unroll_checkpoints", "no unroll_checkpoints")
        self.batch = Batch(model, batch_norm=batch_norm, adapted=adapted, layout=layout)
        self.model, self.tasks, self.transform = model, tasks, transform
        self.names = self.batch.names
        self.per_task = [i for i, _ in self.batch.per_task]
        self.losses: dict[int, torch.Tensor] = {}

    def support(self, every: Tensors, step: int) -> torch.Tensor:
        losses = self.batch.support(self.tasks, every, step)
        seen = self.losses.get(step)
        if seen is None:
            self.losses[step] = losses.detach()
        elif not _same(losses.detach(), seen):
            raise UnrollMismatchError(
                f"support_losses at inner step {step} gave other values when recomputed in the "
                "backward pass (the tasks sample new data at every call?); checkpointed "
                "unrolling needs the same losses at the same parameters (no sampling, no "
                "dropout): use unroll_checkpoints=None"
            )
        return losses

    def step(
        self, state: Any, step: int, *, graph: bool
    ) -> tuple[tuple[torch.Tensor | None, ...], Any, Tensors]:
        """Step ``step`` from ``state`` = (every parameter, optimiser state); with ``graph``, the
        result keeps its graph back to detached leaves of ``state``, which are returned too."""
        every, opt = state
        every = tuple(
            p.detach().requires_grad_() if i in self.batch.per_task_rows else p
            for i, p in enumerate(every)
        )
        flat, spec = pytree.tree_flatten(opt)
        if graph:
            flat = [t.detach().requires_grad_() if _float(t) else t for t in flat]
            opt = pytree.tree_unflatten(spec, flat)
        updates, new_opt, _ = inner_step(
            self.support, every, self.batch.rows, self.transform, opt, step,
            create_graph=graph, graph_update=graph,
        )  # fmt: skip
        leaves = tuple(every[i] for i in self.per_task) + tuple(t for t in flat if _float(t))
        return updates, new_opt, leaves

    def advance(self, state: Any, step: int) -> Any:
        updates, opt, _ = self.step(state, step, graph=False)
        every = tuple(
            p.detach() if u is None else (p + u).detach()
            for p, u in zip(state[0], updates, strict=True)
        )
        return every, pytree.tree_map(
            lambda t: t.detach() if isinstance(t, torch.Tensor) else t, opt
        )

    def vjp(
        self, state: Any, step: int, adjoint: list[torch.Tensor], extra: Sequence[torch.Tensor]
    ) -> tuple[list[torch.Tensor], Tensors]:
        """The adjoint of state ``step`` from that of state ``step + 1``, and the step's
        contribution to the gradient of ``extra`` (Meta-SGD's rates)."""
        updates, new_opt, leaves = self.step(state, step, graph=True)
        count = len(self.per_task)
        outputs: list[torch.Tensor] = []
        cotangents = []
        for k, i in enumerate(self.per_task):
            update = updates[i]
            if update is not None:
                outputs.append(update)
                cotangents.append(adjoint[k])
        for t, a in zip(_float_leaves(new_opt), adjoint[count:], strict=True):
            if t.requires_grad:
                outputs.append(t)
                cotangents.append(a)
        found = torch.autograd.grad(
            outputs, leaves + tuple(extra), cotangents, allow_unused=True, materialize_grads=True
        )
        new = [adjoint[k] + found[k] for k in range(count)] + list(found[count : len(leaves)])
        return new, found[len(leaves) :]


def _same(recomputed: torch.Tensor, first: torch.Tensor) -> bool:
    """Whether recomputed losses are the first pass's: equal, as they are on the CPU, or within
    a rounding error (kernels that sum in a varying order)."""
    return torch.equal(recomputed, first) or torch.allclose(recomputed, first, rtol=1e-5, atol=0)


def _float(t: object) -> bool:
    return isinstance(t, torch.Tensor) and t.is_floating_point()


class _CheckpointedUnroll(torch.autograd.Function):
    """θ (and the rates) → the adapted per-task parameters, reversed by the schedule."""

    @staticmethod
    def forward(
        ctx: Any, unroll: _Unroll, steps: int, slots: int, num_theta: int, *inputs: torch.Tensor
    ) -> Tensors:
        params = [p.detach() for p in unroll.model.parameters()]
        every = unroll.batch.expand(params, len(unroll.tasks))
        held = {0: (every, unroll.transform.init(every))}
        actions = _schedule(steps, slots)
        state, at = held[0], 0
        with torch.enable_grad():
            for action, a, m in actions:
                if action != "hold":
                    break  # the first descent of the schedule: held states the backward needs
                for k in range(a, m):
                    state = unroll.advance(state, k)
                held[m], at = state, m
            for k in range(at, steps):
                state = unroll.advance(state, k)
        ctx.unroll, ctx.held, ctx.actions, ctx.num_theta = unroll, held, actions, num_theta
        ctx.extra = inputs[num_theta:]
        return tuple(state[0][i] for i in unroll.per_task)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, *grads: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        unroll, held = ctx.unroll, ctx.held
        # the parameters' adjoints from the query loss; the optimiser state's start at zero
        adjoint = list(grads) + [torch.zeros_like(t) for t in _float_leaves(held[0][1])]
        extra_grads = [torch.zeros_like(t) for t in ctx.extra]
        with torch.enable_grad():
            for action, a, m in ctx.actions:
                if action == "hold" and m not in held:
                    state = held[a]
                    for k in range(a, m):
                        state = unroll.advance(state, k)
                    held[m] = state
                elif action == "free":
                    held.pop(a, None)
                elif action == "reverse":
                    adjoint, found = unroll.vjp(held[a], a, adjoint, ctx.extra)
                    extra_grads = [g + f for g, f in zip(extra_grads, found, strict=True)]
        theta = [adjoint[k].sum(0) for k in range(ctx.num_theta)]
        ctx.held = None
        return (None, None, None, None, *theta, *extra_grads)


def _float_leaves(tree: Any) -> list[torch.Tensor]:
    return [t for t in pytree.tree_flatten(tree)[0] if _float(t)]


def checkpointed_adapt(
    model: nn.Module,
    tasks: BatchedTasks,
    transform: GradientTransformation,
    steps: int,
    slots: int,
    *,
    extra: Sequence[torch.Tensor] = (),
    batch_norm: str = "running",
    adapted: Collection[str] | None = None,
) -> Adapted:
    """`metaopt.engine.inner_path`'s last state, second order, with the inner states
    recomputed in the backward pass: at most ``slots`` held at once besides θ.

    Args:
        model: The network; its trainable parameters are θ.
        tasks: The meta-batch.
        transform: The inner update, one gradient per parameter in ``parameters()`` order.
        steps: Inner steps.
        slots: States held at once (``≥ 1``; ``steps − 1`` or more stores each state once).
        extra: Tensors the update depends on that receive a gradient too (Meta-SGD's rates).
        batch_norm: `metaopt.engine.BATCH_NORM_MODES`.
        adapted: The names the inner loop adapts (``None``: every trainable parameter).

    Returns:
        The adapted per-task tensors (a function of θ and ``extra`` through this unroll's
        backward), the shared tensors, and the support losses at θ.
    """
    unroll = _Unroll(model, tasks, transform, batch_norm=batch_norm, adapted=adapted)
    named = list(model.parameters())
    theta = [named[i] for i in unroll.per_task]
    out = _CheckpointedUnroll.apply(unroll, steps, slots, len(theta), *theta, *extra)
    params = {unroll.names[i]: t for i, t in zip(unroll.per_task, out, strict=True)}
    return params, unroll.batch.layout.shared, unroll.losses[0]
