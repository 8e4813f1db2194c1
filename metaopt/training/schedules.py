"""What MAML++ (Antoniou et al., 2019, "How to train your MAML") changes from one meta-iteration
to the next: the multi-step loss's step weights and derivative-order annealing, set on the
learner before each iteration by `apply_schedules` (the outer learning rate's schedule is
`metaopt.training.build.outer_schedule`). Both depend on the iteration alone, so a resumed run
follows them exactly.
"""

from __future__ import annotations

from typing import Any

from metaopt.registry import algorithm

__all__ = ["apply_schedules", "multi_step_weights"]

#: The floor of a non-final step's weight, times the number of steps (MAML++'s code: 0.03 / K).
MSL_FLOOR = 0.03


def multi_step_weights(steps: int, done: int, anneal: int) -> tuple[float, ...] | None:
    r"""The multi-step loss's weights $v_1, \dots, v_K$ after ``done`` completed iterations.

    MAML++'s per-step importance vector (Antoniou et al., 2019, §4 "Multi-Step Loss
    Optimization"; the schedule of their code's ``get_per_step_loss_importance_vector``, with
    its epochs counted here in iterations): with $K$ = ``steps``, $N$ = ``anneal`` and
    $t$ = ``done``, every weight starts at $1/K$, the non-final ones decay by $t/(KN)$ to a
    floor of $0.03/K$, and the last grows by $(K-1)\,t/(KN)$ up to $1 - 0.03(K-1)/K$:

    $$v_k = \max\Big(\frac1K - \frac{t}{KN}, \frac{0.03}{K}\Big)\ (k < K),\qquad
    v_K = \min\Big(\frac1K + \frac{(K-1)\,t}{KN}, 1 - \frac{0.03\,(K-1)}{K}\Big).$$

    From $t = N$ on the loss is the last step's alone: ``None``.
    """
    if done >= anneal:
        return None
    decay = done / steps / anneal
    floor = MSL_FLOOR / steps
    early = [max(1.0 / steps - decay, floor)] * (steps - 1)
    last = min(1.0 / steps + (steps - 1) * decay, 1.0 - (steps - 1) * floor)
    return (*early, last)


def apply_schedules(algo: Any, config: Any, iteration: int) -> None:
    """Set ``algo`` for meta-iteration ``iteration`` (1-based) of a run configured by ``config``:
    first-order meta-gradients while ``iteration <= config.first_order_until`` (derivative-order
    annealing, for an algorithm that is second order: first-order MAML stays first order), and
    the multi-step loss's weights under ``config.multi_step_loss``."""
    if config.first_order_until and algorithm(config.algo).exact:
        first_order = iteration <= config.first_order_until
        if algo.first_order != first_order:  # a new rule (and compile) only when it changes
            algo.first_order = first_order
    if config.multi_step_loss:
        algo.step_weights = multi_step_weights(
            config.inner_steps, iteration - 1, config.msl_iterations
        )
