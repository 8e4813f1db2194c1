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
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch

from metaopt.options import check_choice, check_int, check_real, flag
from metaopt.training.family import ConfigError, option
from supervised.batch import TaskBatch
from supervised.config import SupervisedConfig, paper_presets
from supervised.models import ACTIVATIONS

__all__ = ["PRESETS", "SineConfig", "sample_sine", "sine_grid", "sine_values"]


@dataclass
class SineConfig(SupervisedConfig):
    """Sine regression; the defaults are the ``maml`` preset (Finn et al., 2017)."""

    preset: str | None = paper_presets()
    iterations: int = option(2000, "meta-iterations (MAML paper: 70000; see docs/supervised.md)")
    shots: int = option(10, "support points K per task")
    query: int = option(0, "query points per training task (0: same as --shots)")
    amp_min: float = option(0.1, "smallest amplitude A")
    amp_max: float = option(5.0, "largest amplitude A")
    phase_min: float = option(0.0, "smallest phase φ")
    phase_max: float = option(math.pi, "largest phase φ (MAML: π, Reptile seed: 2π)")
    x_min: float = option(-5.0, "left end of the input range")
    x_max: float = option(5.0, "right end of the input range")
    grid: int = option(0, "0: x ~ U[x-min, x-max]; n >= 2: x on the n-point grid (Reptile: 50)")
    minibatch: int = option(
        0, "support points per inner step, walking one shuffled epoch (0: all of them)"
    )
    hidden: int = option(40, "units per hidden layer")
    depth: int = option(2, "hidden layers")
    activation: str = option("relu", "hidden activation: relu or tanh")
    eval_shots: int = option(0, "support points of held-out tasks (0: same as --shots)")
    eval_query: int = option(
        100, "query points of held-out tasks, x ~ U[x-min, x-max] (with --grid: the grid)"
    )
    protocol_points: int = option(10, "10-point protocol: support points taken from the grid")
    protocol_steps: int = option(32, "10-point protocol: plain SGD steps")
    protocol_lr: float = option(0.02, "10-point protocol: SGD learning rate")

    EVALUATION_ONLY: ClassVar[tuple[str, ...]] = (
        "eval_shots",
        "eval_query",
        "protocol_points",
        "protocol_steps",
        "protocol_lr",
    )
    RESUMABLE: ClassVar[tuple[str, ...]] = (*SupervisedConfig.RESUMABLE, *EVALUATION_ONLY)

    def activation_elements(self) -> int:
        """Support and query points, each with its input, target and two numbers per hidden
        unit (pre- and post-activation)."""
        points = self.shots + (self.query or self.shots)
        return points * (2 + 2 * self.hidden * self.depth)

    def validate(self) -> None:
        super().validate()
        for name in ("shots", "eval_query", "hidden", "protocol_points"):
            check_int(flag(name), getattr(self, name), 1)
        for name in ("query", "depth", "grid", "minibatch", "eval_shots", "protocol_steps"):
            check_int(flag(name), getattr(self, name), 0)
        for name in ("amp_min", "phase_min", "phase_max", "x_min", "x_max"):
            check_real(flag(name), getattr(self, name))
        check_real(flag("amp_min"), self.amp_min, low=0.0)
        check_real(flag("amp_max"), self.amp_max, low=self.amp_min)
        check_real(flag("phase_max"), self.phase_max, low=self.phase_min)
        check_real(flag("x_max"), self.x_max, low=self.x_min, low_open=True)
        check_real(flag("protocol_lr"), self.protocol_lr, low=0.0, low_open=True)
        check_choice(flag("activation"), self.activation, tuple(ACTIVATIONS))
        if self.grid == 1:
            raise ConfigError(f"{flag('grid')} must be 0 (uniform x) or >= 2 points; got 1")
        if self.grid:
            why = f" (the {flag('grid')} {self.grid} points of a task)"
            check_int(flag("shots"), self.shots, 1, self.grid, why)
            check_int(flag("eval_shots"), self.eval_shots, 0, self.grid, why)
        check_int(
            flag("protocol_points"),
            self.protocol_points,
            1,
            self.protocol_grid,
            f" (the {self.protocol_grid}-point grid)",
        )

    @property
    def support_points_eval(self) -> int:
        """Support points of a held-out task."""
        return self.eval_shots or self.shots

    @property
    def protocol_grid(self) -> int:
        """Points of the grid the 10-point protocol samples from and scores on."""
        return self.grid or 50


#: Field values of the two papers' settings, applied by ``--preset``.
PRESETS: dict[str, dict[str, Any]] = {
    "maml": {},
    "reptile": {
        "iterations": 30000,
        "phase_max": 2 * math.pi,
        "grid": 50,
        "shots": 50,
        "minibatch": 10,
        "hidden": 64,
        "depth": 2,
        "activation": "tanh",
        "algo": "reptile",
        "inner_lr": 0.02,
        "inner_steps": 5,
        "meta_batch": 1,
        "outer_optimizer": "sgd",
        "outer_lr": 0.1,
        "anneal": True,
        "eval_shots": 10,
    },
}


def sine_grid(x_min: float, x_max: float, points: int) -> np.ndarray:
    """The evenly spaced inputs of a grid task (the Reptile seed's ``np.linspace(-5, 5, 50)``)."""
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
            order drawn here (see :class:`supervised.batch.SupervisedTask`).

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
