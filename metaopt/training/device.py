"""Where a run computes and in what precision: ``--device`` and ``--precision``.

`resolve_device` turns a ``--device`` value into a ``torch.device`` this machine has, or refuses it
in one line; `run_device` is the device of a run: ``auto`` and ``cuda`` give each rank under
torchrun its ``cuda:LOCAL_RANK``, and a family that samples on the CPU (``ON_DEVICE`` false in its
config: the RL ones) always runs there. The model, its learned state and the outer optimiser's
state are built on that device (`metaopt.training.build.build_algorithm`); the family puts its
tasks there. Checkpoints are read onto the CPU and copied into a model that already lives on the
run's device, so a run written on one device resumes and evaluates on another.

`autocast` is the context the forward passes run in: nothing for ``fp32``, ``torch.autocast`` to
bfloat16 or float16 otherwise. `grad_scaler` is fp16's ``torch.amp.GradScaler``: the query
losses are multiplied by its scale before they are differentiated (the ``scale`` argument of
``meta_backward``), and the meta-gradient divided by it again before the outer step, so that
small gradients survive float16.
"""

from __future__ import annotations

import os
from contextlib import AbstractContextManager, nullcontext

import torch

from metaopt.options import DEVICES, ConfigError, check_device
from metaopt.training.train_config import TrainConfig

__all__ = ["autocast", "grad_scaler", "resolve_device", "run_device"]

#: ``--precision`` -> the dtype autocast computes in (fp32: no autocast).
_AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return backend is not None and bool(backend.is_available())


def resolve_device(name: str, *, local_rank: int | None = None) -> torch.device:
    """The ``torch.device`` that ``--device name`` means on this machine.

    Args:
        name: One of `metaopt.options.DEVICES` (``cuda:N`` with a number).
        local_rank: Under torchrun, this process's ``LOCAL_RANK``: ``auto`` and ``cuda`` then
            take ``cuda:local_rank``.

    Raises:
        ConfigError: a misspelt device, or one this machine does not have (no CUDA, fewer GPUs
            than N, no MPS).
    """
    check_device("--device", name)
    if name == "auto":
        if torch.cuda.is_available():
            name = "cuda"
        elif _mps_available():
            return torch.device("mps")
        else:
            return torch.device("cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "mps":
        if not _mps_available():
            raise ConfigError(
                f"--device mps: this machine has no MPS device (Apple GPU); allowed here: "
                f"{_available()}"
            )
        return torch.device("mps")
    if not torch.cuda.is_available():
        raise ConfigError(
            f"--device {name}: this machine has no CUDA device (torch {torch.__version__}); "
            f"allowed here: {_available()}"
        )
    index = int(name.partition(":")[2]) if ":" in name else (local_rank or 0)
    count = torch.cuda.device_count()
    if index >= count:
        raise ConfigError(
            f"--device {name}: cuda:{index} does not exist, this machine has {count} CUDA "
            f"device(s) (cuda:0 to cuda:{count - 1})"
        )
    return torch.device("cuda", index)


def _available() -> str:
    """The ``--device`` values this machine takes, for a refusal's message."""
    names = ["auto", "cpu"]
    if torch.cuda.is_available():
        names += ["cuda", *(f"cuda:{i}" for i in range(torch.cuda.device_count()))]
    if _mps_available():
        names.append("mps")
    return ", ".join(names) + f" (of {', '.join(DEVICES)})"


def run_device(config: TrainConfig) -> torch.device:
    """The device a run of ``config`` computes on (see the module's docstring).

    Raises:
        ConfigError: as `resolve_device`.
    """
    if not type(config).ON_DEVICE:  # validate() lets such a family take auto or cpu alone
        return torch.device("cpu")
    under_torchrun = int(os.environ.get("WORLD_SIZE", "1")) > 1
    local_rank = int(os.environ.get("LOCAL_RANK", "0")) if under_torchrun else None
    return resolve_device(config.device, local_rank=local_rank)


def autocast(config: TrainConfig, device: torch.device) -> AbstractContextManager[object]:
    """The context of the forward passes under ``config.precision`` on ``device``."""
    dtype = _AUTOCAST_DTYPES.get(config.precision)
    if dtype is None:
        return nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def grad_scaler(config: TrainConfig, device: torch.device) -> torch.amp.GradScaler | None:
    """fp16's gradient scaler on ``device`` (``None`` for fp32 and bf16, whose exponent range
    is float32's)."""
    if config.precision != "fp16":
        return None
    return torch.amp.GradScaler(device.type)
