"""Meta-training across processes and machines with ``torch.distributed``, launched by torchrun.

The meta-batch is sharded across ranks: every rank draws the *same* full meta-batch from the
run's seed (drawing tasks is cheap; adapting to them is not) and adapts to its own contiguous
slice; each task's query loss is weighted by 1 / (global meta-batch), and one all-reduce sums the
meta-gradients, so every rank holds the gradient a single process would compute and takes the
same outer step. Uneven shards are fine: the weights, not the shard sizes, make the average.

Evaluation is sharded the same way, and the group it is shared across is passed explicitly: the
loop calls the families' ``periodic_eval`` with ``group=`` this process's `DistInfo`
(``evaluate`` with it as ``EvalRequest.group``), and the families hand it on to `map_tasks` and
`on_main`. With `map_tasks`, each rank computes the per-task values of its slice of the held-out
tasks and the slices are gathered, so every rank holds the whole set and summarises it identically;
`on_main` runs one-off work (training a baseline) on rank 0 alone and hands the result to the
others. With ``group=None`` (one process, a notebook, a test calling ``evaluate`` directly) both
simply run locally. There is no module state: what a call shares, and with whom, is in its
arguments, so a test can run the same family code with and without a group side by side.

Under ``torchrun`` the environment names the rank and world size; without it, everything here
is a no-op for a single process.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from metaopt.options import ConfigError

__all__ = [
    "DistInfo",
    "all_reduce_gradients",
    "any_rank",
    "barrier",
    "broadcast_object",
    "check_same_config",
    "config_hash",
    "gather_tasks",
    "map_tasks",
    "maxima",
    "on_main",
    "setup",
    "shard",
    "shard_bounds",
    "task_weighted_sum",
    "teardown",
    "weighted_means",
]


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands: its rank, the world size, and the backend (None: one process)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None
    #: whether `setup` created the process group (and `teardown` may destroy it)
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        """Rank 0 alone writes metrics, plots and checkpoints."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1


def setup(
    backend: str | None = None, timeout_s: float = 600.0, device: torch.device | None = None
) -> DistInfo:
    """Join the process group torchrun describes in the environment (``WORLD_SIZE`` > 1).

    Args:
        backend: ``"gloo"`` or ``"nccl"``; ``None`` or ``"auto"``: NCCL when the run computes on
            CUDA (``device``; without one, when CUDA is available), else gloo.
        timeout_s: How long a collective waits for a rank before every rank fails with an error
            (a rank that died must not leave the others hanging).
        device: The device the run computes on (`metaopt.training.device.run_device`).
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistInfo()
    if backend is None or backend == "auto":
        on_cuda = device.type == "cuda" if device is not None else torch.cuda.is_available()
        backend = "nccl" if on_cuda else "gloo"
    if backend not in ("gloo", "nccl"):
        raise ConfigError(f"--dist-backend must be gloo or nccl, got {backend!r}")
    owns_group = not dist.is_initialized()
    if owns_group:
        dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank, backend, owns_group)


def _device(info: DistInfo) -> torch.device:
    """Where a collective's buffers must live: NCCL moves CUDA tensors only, gloo CPU ones."""
    if info.backend == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def shard_bounds(num_tasks: int, rank: int, world_size: int) -> tuple[int, int]:
    """The contiguous slice ``[start, stop)`` of ``num_tasks`` tasks that ``rank`` adapts to.

    The first ``num_tasks % world_size`` ranks take one task more.

    Raises:
        ConfigError: when there are fewer tasks than ranks.
    """
    if num_tasks < world_size:
        raise ConfigError(
            f"--meta-batch {num_tasks} is smaller than the world size {world_size}: "
            "every rank needs at least one task"
        )
    base, extra = divmod(num_tasks, world_size)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


def shard(tasks: Sequence[Any], info: DistInfo) -> Sequence[Any]:
    """This rank's slice of a meta-batch; a batch with ``select(slice)`` stays a batch."""
    if not info.active:
        return tasks
    start, stop = shard_bounds(len(tasks), info.rank, info.world_size)
    select = getattr(tasks, "select", None)
    if callable(select):
        return select(slice(start, stop))
    return list(tasks)[start:stop]


def all_reduce_gradients(params: Sequence[torch.Tensor], info: DistInfo) -> int:
    """Sum ``.grad`` of ``params`` over the ranks, in one collective; return the bytes sent.

    Missing gradients count as zeros, so every rank ends with a gradient for every parameter.
    """
    if not info.active:
        return 0
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads]).to(_device(info))
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    offset = 0
    for p, g in zip(params, grads, strict=True):
        p.grad = flat[offset : offset + g.numel()].view_as(g).to(g.device, copy=True)
        offset += g.numel()
    return flat.numel() * flat.element_size()


def gather_tasks(rows: torch.Tensor, num_tasks: int, info: DistInfo) -> torch.Tensor:
    """Every rank's per-task values ``rows [k, shard]``, joined in task order: ``[k, num_tasks]``.

    One collective: the shard sizes follow from `shard_bounds`, so only the values travel
    (padded to the largest shard).
    """
    if not info.active:
        return rows
    bounds = [shard_bounds(num_tasks, rank, info.world_size) for rank in range(info.world_size)]
    longest = max(stop - start for start, stop in bounds)
    padded = rows.new_zeros(rows.shape[0], longest, device=_device(info))
    padded[:, : rows.shape[1]] = rows.detach()
    parts = [torch.empty_like(padded) for _ in range(info.world_size)]
    dist.all_gather(parts, padded)
    joined = [part[:, : stop - start] for part, (start, stop) in zip(parts, bounds, strict=True)]
    return torch.cat(joined, dim=1).to(rows.device)


T = TypeVar("T")


def map_tasks(
    compute: Callable[[Any], torch.Tensor], tasks: Sequence[Any], group: DistInfo | None
) -> torch.Tensor:
    """``compute(tasks)``, with the tasks split across the ranks of ``group`` (``None``: this
    process alone computes them all).

    ``compute`` maps a sequence of tasks to per-task values ``[..., len(tasks)]``: the last
    dimension follows the tasks, and a task's values must not depend on which other tasks are in
    the sequence. Each rank calls it on its slice (`shard`, so a batch with ``select``
    stays a batch) and the slices are gathered in task order: every rank returns the
    ``[..., len(tasks)]`` tensor (detached) that one process computing everything would. With
    fewer tasks than ranks, every rank computes them all.

    A collective: every rank of ``group`` must call it, with the same tasks, in the same order.
    """
    info = DistInfo() if group is None else group
    if not info.active or len(tasks) < info.world_size:
        return compute(tasks)
    part = shard(tasks, info)
    values = compute(part)
    if values.dim() == 0 or values.shape[-1] != len(part):
        raise ValueError(
            f"map_tasks: compute returned shape {tuple(values.shape)} for {len(part)} tasks; "
            "the last dimension must follow the tasks"
        )
    rows = values.detach().reshape(-1, len(part))
    return gather_tasks(rows, len(tasks), info).reshape(*values.shape[:-1], len(tasks))


def on_main(work: Callable[[], T], group: DistInfo | None) -> T:
    """``work()`` run on rank 0 of ``group`` alone (one-off work: a run directory, a baseline);
    every rank returns rank 0's result, pickled across. ``None``: this process runs it.

    When ``work`` fails on rank 0, every rank raises: rank 0 the original error, the others a
    [`ConfigError`][metaopt.training.ConfigError] with its message when it was one, otherwise a
    ``RuntimeError`` that names it, instead of waiting for a result that never comes.
    """
    info = DistInfo() if group is None else group
    if not info.active:
        return work()
    outcome: tuple[str, Any] = ("ok", None)
    failure: Exception | None = None
    if info.is_main:
        try:
            outcome = ("ok", work())
        except ConfigError as error:
            failure, outcome = error, ("config", str(error))
        except Exception as error:
            failure, outcome = error, ("error", f"{type(error).__name__}: {error}")
    kind, value = broadcast_object(outcome, info)
    if failure is not None:
        raise failure
    if kind == "config":
        raise ConfigError(value)
    if kind == "error":
        raise RuntimeError(f"rank 0 failed: {value}")
    return value


def weighted_means(
    values: dict[str, float], weight: int, total: int, info: DistInfo
) -> dict[str, float]:
    """Combine per-rank means of per-task numbers into the means over all ``total`` tasks.

    Every rank must pass the same keys (the family's ``iteration_metrics`` of its shard).
    """
    if not info.active:
        return values
    keys = sorted(values)
    sums = torch.tensor(
        [values[k] * weight for k in keys], dtype=torch.float64, device=_device(info)
    )
    dist.all_reduce(sums, op=dist.ReduceOp.SUM)
    return {k: float(v) / total for k, v in zip(keys, sums.tolist(), strict=True)}


def maxima(values: dict[str, float], info: DistInfo) -> dict[str, float]:
    """Each number's largest value over the ranks (every rank passes the same keys): what a
    number that is the worst over a rank's tasks is over all of them."""
    if not info.active or not values:
        return values
    keys = sorted(values)
    largest = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=_device(info))
    dist.all_reduce(largest, op=dist.ReduceOp.MAX)
    return dict(zip(keys, largest.tolist(), strict=True))


def task_weighted_sum(
    weight: int, total: int, info: DistInfo
) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """``value -> Σ_ranks (weight / total) · value``: a quantity each rank computed as a mean over
    its ``weight`` of the ``total`` tasks, made the mean over all of them (one collective per
    call, on every rank alike); ``None`` outside torchrun."""
    if not info.active:
        return None

    def reduce(value: torch.Tensor) -> torch.Tensor:
        share = (value.detach() * (weight / total)).to(_device(info))
        dist.all_reduce(share, op=dist.ReduceOp.SUM)
        return share.to(value.device)

    return reduce


def any_rank(flag: bool, info: DistInfo) -> bool:
    """Whether ``flag`` is true on any rank (so that all ranks take the same branch)."""
    if not info.active:
        return flag
    value = torch.tensor([1 if flag else 0], dtype=torch.int64, device=_device(info))
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def broadcast_object(value: Any, info: DistInfo) -> Any:
    """Rank 0's ``value`` on every rank."""
    if not info.active:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(info: DistInfo) -> None:
    if info.active:
        dist.barrier()


def teardown(info: DistInfo) -> None:
    """Leave the process group this module joined."""
    if info.active and info.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def config_hash(config: dict[str, Any]) -> str:
    """A short hash of a config, compared across ranks at start-up."""
    text = json.dumps(config, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def check_same_config(config: dict[str, Any], info: DistInfo) -> None:
    """Every rank must train the same config; name the fields that differ if not.

    Raises:
        ConfigError: on every rank, when any two ranks' configs differ.
    """
    if not info.active:
        return
    gathered: list[Any] = [None] * info.world_size
    dist.all_gather_object(gathered, config)
    for rank, other in enumerate(gathered):
        if other != gathered[0]:
            fields = sorted(
                k for k in set(other) | set(gathered[0]) if other.get(k) != gathered[0].get(k)
            )
            raise ConfigError(
                f"rank {rank}'s config differs from rank 0's in {', '.join(fields)} "
                f"(config hashes {config_hash(other)} vs {config_hash(gathered[0])}); "
                "start every rank with the same flags"
            )
