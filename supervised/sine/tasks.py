"""Sine-wave regression, the toy problem of MAML and Reptile: each task is y = A·sin(x + φ).

Two presets reproduce the two papers' settings:

* ``maml`` (Finn et al., 2017, "Model-Agnostic Meta-Learning for Fast Adaptation of Deep
  Networks", section 5.1): A ~ U[0.1, 5], φ ~ U[0, π], x ~ U[-5, 5]; K support and K query points;
  MLP 1-40-40-1 with ReLU; one inner SGD step at α = 0.01; 25 tasks per meta-batch; Adam at 1e-3.
* ``reptile`` (Nichol et al., 2018, "On First-Order Meta-Learning Algorithms", and OpenAI's
  Reptile sine demo): φ ~ U[0, 2π], x on a 50-point grid of [-5, 5]; MLP 1-64-64-1 with tanh;
  the inner loop is one epoch of SGD at 0.02 over the 50 points in shuffled minibatches of 10
  (5 steps); the outer step is plain SGD with ε = 0.1 annealed linearly to 0; one task per
  iteration. It is evaluated by the demo's protocol: 32 SGD steps on 10 of the grid points, MSE on
  the whole grid.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from supervised.batch import TaskBatch
from supervised.config import SINE_PRESETS as PRESETS
from supervised.config import SineConfig

__all__ = ["PRESETS", "SineConfig", "sample_sine", "sine_grid", "sine_values"]


# SineConfig and PRESETS live in supervised.config, which imports no torch (the command line reads
# them); they are exported from here too.


def sine_grid(x_min: float, x_max: float, points: int) -> np.ndarray:
    """The evenly spaced inputs of a grid task (the Reptile demo's ``np.linspace(-5, 5, 50)``)."""
    return np.linspace(x_min, x_max, points)


def sine_values(x: torch.Tensor, amplitude: torch.Tensor, phase: torch.Tensor) -> torch.Tensor:
    """y = A·sin(x + φ), with ``amplitude`` and ``phase`` broadcast against ``x``."""
    return amplitude * torch.sin(x + phase)


def sample_sine(
    rng: np.random.Generator,
    num_tasks: int,
    *,
    shots: int,
    query: int,
    amplitude: tuple[float, float] = (0.1, 5.0),
    phase: tuple[float, float] = (0.0, math.pi),
    x_range: tuple[float, float] = (-5.0, 5.0),
    grid: int = 0,
    minibatch: int = 0,
) -> TaskBatch:
    """Draw ``num_tasks`` sine tasks, all randomness from ``rng``.

    Args:
        rng: The only source of randomness.
        num_tasks: Tasks B.
        shots: Support points K per task.
        query: Query points per task, drawn afresh (ignored with ``grid``: the query set is the
            whole grid, the Reptile demo's "loss on plotted curve").
        amplitude: Range of the uniform amplitude A.
        phase: Range of the uniform phase φ.
        x_range: Range of the inputs.
        grid: 0 for x ~ U(x_range); otherwise the support points are ``shots`` distinct points of
            the ``grid``-point grid of ``x_range``.
        minibatch: When > 0, inner steps walk the support set in minibatches of this size, in an
            order drawn here (see `supervised.batch.SupervisedTask`).

    Returns:
        A batch with ``support_x`` ``[B, K, 1]`` and ``query_x`` ``[B, Q, 1]`` (float32), and
        ``info["amplitude"]``, ``info["phase"]`` of shape ``[B]``.
    """
    # + 0.0 turns −0.0 into 0.0: numpy refuses the range (0.0, −0.0) as "high − low < 0".
    amp = rng.uniform(amplitude[0] + 0.0, amplitude[1] + 0.0, size=num_tasks)
    phi = rng.uniform(phase[0] + 0.0, phase[1] + 0.0, size=num_tasks)
    if grid:
        points = sine_grid(x_range[0], x_range[1], grid)
        # Each row a permutation of the grid: its first `shots` entries are distinct points.
        picks = rng.permuted(np.tile(np.arange(grid), (num_tasks, 1)), axis=1)[:, :shots]
        support_x = points[picks]
        query_x = np.tile(points, (num_tasks, 1))
    else:
        support_x = rng.uniform(x_range[0] + 0.0, x_range[1] + 0.0, size=(num_tasks, shots))
        query_x = rng.uniform(x_range[0] + 0.0, x_range[1] + 0.0, size=(num_tasks, query))
    order = None
    if minibatch:
        order = rng.permuted(np.tile(np.arange(shots), (num_tasks, 1)), axis=1)

    amp_t = torch.as_tensor(amp, dtype=torch.float32)
    phi_t = torch.as_tensor(phi, dtype=torch.float32)
    sx = torch.as_tensor(support_x, dtype=torch.float32).unsqueeze(-1)
    qx = torch.as_tensor(query_x, dtype=torch.float32).unsqueeze(-1)
    a, p = amp_t[:, None, None], phi_t[:, None, None]
    return TaskBatch(
        support_x=sx,
        support_y=sine_values(sx, a, p),
        query_x=qx,
        query_y=sine_values(qx, a, p),
        loss="mse",
        minibatch=minibatch or None,
        support_order=None if order is None else torch.as_tensor(order, dtype=torch.long),
        info={"amplitude": amp_t, "phase": phi_t},
    )


def sample_from_config(
    config: SineConfig, rng: np.random.Generator, num_tasks: int, *, evaluation: bool = False
) -> TaskBatch:
    """Training tasks, or (``evaluation=True``) held-out tasks: full-batch, their own sizes."""
    if evaluation:
        shots, query, minibatch = config.support_points_eval, config.eval_query, 0
    else:
        shots, query, minibatch = config.shots, config.query or config.shots, config.minibatch
    return sample_sine(
        rng,
        num_tasks,
        shots=shots,
        query=query,
        amplitude=(config.amp_min, config.amp_max),
        phase=(config.phase_min, config.phase_max),
        x_range=(config.x_min, config.x_max),
        grid=config.grid,
        minibatch=minibatch,
    )


def sample_protocol(config: SineConfig, rng: np.random.Generator, num_tasks: int) -> TaskBatch:
    """Tasks of the Reptile demo's evaluation: ``protocol_points`` grid points, scored on the grid.

    The demo draws its 10 points with replacement; here they are distinct, so that every task
    really has 10 support points.
    """
    return sample_sine(
        rng,
        num_tasks,
        shots=config.protocol_points,
        query=0,
        amplitude=(config.amp_min, config.amp_max),
        phase=(config.phase_min, config.phase_max),
        x_range=(config.x_min, config.x_max),
        grid=config.protocol_grid,
    )
