"""Adaptation curves of any algorithm on any tasks: the query loss after k inner steps, with 95%
intervals ([`evaluate`][metaopt.evaluate]).

The curve is measured with the algorithm's own adaptation, nothing else: ``algo.adapt`` one task
at a time for plain [`Task`][metaopt.Task] objects, or ``algo.adapt_batch_path`` (the
vectorised engine: one batched adaptation for all tasks, the query loss read after every step)
when the tasks are a [`BatchedTasks`][metaopt.BatchedTasks]. Both give the same numbers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from metaopt.engine import can_vectorise, check_losses
from metaopt.options import check_choice, check_int
from metaopt.stats import task_summary
from metaopt.task import BatchedTasks, Task, is_batched, is_task

if TYPE_CHECKING:
    from metaopt.algorithms import MetaLearner

__all__ = ["EVALUATION_ENGINES", "AdaptationCurves", "evaluate"]

#: ``engine=`` of `evaluate`.
EVALUATION_ENGINES = ("auto", "vmap", "loop")


@dataclass(frozen=True)
class AdaptationCurves:
    """Query losses of held-out tasks after several numbers of inner steps.

    Attributes:
        steps: The numbers of inner steps, in the order asked.
        losses: ``[len(steps), tasks]`` float64: task j's query loss after ``steps[i]`` steps
            (``inf``/``nan`` where adaptation diverged).
        engine: ``"vmap"`` (one batched adaptation) or ``"loop"`` (``algo.adapt`` per task).
    """

    steps: tuple[int, ...]
    losses: torch.Tensor
    engine: str

    @property
    def by_steps(self) -> dict[str, dict[str, Any]]:
        """``{"<k>": {"mean", "ci95"}}``: the mean over tasks after k steps and the half-width of
        its 95% interval, 1.96·sd/√n (`metaopt.stats.task_summary`: where some tasks
        diverged, ``diverged`` counts them and ``finite`` summarises the others)."""
        return {
            str(k): task_summary(row.numpy())
            for k, row in zip(self.steps, self.losses, strict=True)
        }

    @property
    def after_minus_before(self) -> dict[str, dict[str, Any]]:
        """The paired change from step 0, ``{"<k>": summary of loss(k) − loss(0)}``: the
        interval that resolves an improvement, as both are measured on the same tasks.

        Raises:
            ValueError: when 0 is not among the steps.
        """
        if 0 not in self.steps:
            raise ValueError("after_minus_before needs step 0 among the steps")
        before = self.losses[self.steps.index(0)]
        return {
            str(k): task_summary((row - before).numpy())
            for k, row in zip(self.steps, self.losses, strict=True)
        }

    def __str__(self) -> str:
        lines = [f"query loss over {self.losses.shape[1]} tasks (mean ± 95% CI, {self.engine}):"]
        for k, summary in self.by_steps.items():
            text = f"{summary['mean']:.4g} ± {summary['ci95']:.2g}"
            if "diverged" in summary:  # a mean over the others would not compare: none
                text = f"diverged on {summary['diverged']} of {self.losses.shape[1]} tasks"
            lines.append(f"  after {int(k):>3} steps: {text}")
        return "\n".join(lines)


def evaluate(
    algo: MetaLearner,
    tasks: Sequence[Task] | BatchedTasks,
    steps: Sequence[int] = (0, 1, 5, 10),
    *,
    engine: str = "auto",
) -> AdaptationCurves:
    """Adapt ``algo`` to each task by its own inner update and measure the query loss after each
    number of inner steps in ``steps``; the model is left exactly as it was.

    The fast engine needs a [`BatchedTasks`][metaopt.BatchedTasks]: then all tasks adapt in one
    batched computation (``algo.adapt_batch_path``, one adaptation to ``max(steps)`` read at
    every step). A plain sequence of [`Task`][metaopt.Task] objects is adapted one task at
    a time through ``algo.adapt`` (once per task and number of steps), which works for any task
    and model but is a Python loop: write your tasks as a ``BatchedTasks`` to evaluate hundreds
    of them quickly. The adaptation is first order (no graph is kept), as evaluation needs.

    Args:
        algo: Any [`MetaLearner`][metaopt.MetaLearner] (MAML, Meta-SGD, Reptile, iMAML, ANIL via
            ``adapt=``).
        tasks: Held-out tasks: a sequence of tasks, or a ``BatchedTasks``.
        steps: Numbers of inner steps, each ≥ 0 (0: the model before adaptation).
        engine: ``"auto"`` (vectorised when ``tasks`` is a ``BatchedTasks`` the model can
            run batched, otherwise the loop), ``"vmap"`` (refused with the reason when it
            cannot run) or ``"loop"``.

    Returns:
        [`AdaptationCurves`][metaopt.AdaptationCurves]: the per-task losses, their means and 95%
        intervals (``by_steps``), and the paired change from step 0 (``after_minus_before``).

    Raises:
        ValueError: for empty ``tasks`` or ``steps``, a negative step or an unknown engine.
        TypeError: for tasks without ``support_loss`` and ``query_loss``, or ``engine="vmap"``
            on tasks that cannot be batched (the message says why).
    """
    check_choice("engine", engine, EVALUATION_ENGINES)
    steps = tuple(check_int("steps", k, 0) for k in steps)
    if not steps:
        raise ValueError("steps must name at least one number of inner steps")
    if len(tasks) == 0:
        raise ValueError("evaluate needs at least one task")
    reason = (
        "the tasks are not a BatchedTasks (support_losses, query_losses)"
        if not is_batched(tasks)
        else can_vectorise(algo.model, tasks, algo.batch_norm)
    )
    if engine == "vmap" and reason is not None:
        raise TypeError(f"engine='vmap' cannot evaluate these tasks: {reason}")
    if engine != "loop" and reason is None:
        return AdaptationCurves(steps, _batched(algo, tasks, steps), "vmap")  # type: ignore[arg-type]
    return AdaptationCurves(steps, _looped(algo, tasks, steps), "loop")  # type: ignore[arg-type]


def _batched(algo: MetaLearner, tasks: BatchedTasks, steps: tuple[int, ...]) -> torch.Tensor:
    """``[len(steps), B]`` from one batched adaptation, read after every step."""
    found: dict[int, torch.Tensor] = {}
    for step, forward in enumerate(algo.adapt_batch_path(tasks, max(steps))):
        if step in steps:
            with torch.no_grad():
                losses = tasks.query_losses(forward)
            found[step] = check_losses(losses, len(tasks), "query_losses").double()
    return torch.stack([found[k] for k in steps]).cpu()


def _looped(algo: MetaLearner, tasks: Sequence[Task], steps: tuple[int, ...]) -> torch.Tensor:
    """``[len(steps), B]`` through ``algo.adapt``, one task and number of steps at a time."""
    values = torch.empty(len(steps), len(tasks), dtype=torch.float64)
    for j, task in enumerate(tasks):
        if not is_task(task):
            raise TypeError(
                f"task {j} ({type(task).__name__}) has no support_loss/query_loss methods"
            )
        for i, k in enumerate(steps):
            with algo.adapt(task, steps=k) as model, torch.no_grad():
                values[i, j] = float(task.query_loss(model))
    return values
