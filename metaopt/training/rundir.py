"""The run directory: creating it, the files written there, and reading a run back.

A run directory holds ``config.json`` (resolved config, seed, package versions, the command and,
once known, the engine used), ``metrics.jsonl`` (one JSON object per iteration),
``checkpoint.pt`` (and ``checkpoint.prev.pt``, the one before), ``best.pt`` (a family that
selects on validation tasks: the best parameters so far), ``eval.json`` and PNG plots.
JSON is written strict (RFC 8259 has no NaN or Infinity: a non-finite number becomes ``null``).
Every file but ``metrics.jsonl`` is written atomically (a temporary file renamed over it), so a
crash or an I/O error leaves the old file or the new one, never half of one; ``metrics.jsonl`` is
appended to, and a resume drops a last line cut short (`metaopt.training.resuming`).

One process owns a run directory at a time: `new_run_dir` creates it and takes its lock
(`metaopt.training.lock`) before looking inside, then removes the temporary files a killed
process left.
"""

from __future__ import annotations

import json
import math
import platform
import sys
from contextlib import ExitStack
from datetime import datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import torch

from metaopt.training.checkpoint import atomic_write_bytes, is_temporary, remove_temporaries
from metaopt.training.family import ConfigError, TaskFamily, TrainConfig
from metaopt.training.lock import LOCK_FILE, RunLock

__all__ = [
    "ABANDONED",
    "BEST",
    "CHECKPOINT",
    "check_run_dir",
    "finite_or_none",
    "new_directory",
    "new_run_dir",
    "package_versions",
    "read_run",
    "record_device",
    "record_engine",
    "write_json",
    "write_json_atomic",
]

#: The latest checkpoint of a run directory; `metaopt.training.checkpoint.previous_path` names
#: the one before it (``checkpoint.prev.pt``).
CHECKPOINT = "checkpoint.pt"
#: The parameters that scored best on validation tasks (`metaopt.training.selection`), in a run
#: of a family that selects one.
BEST = "best.pt"
#: Where a resume from an older checkpoint moves the latest one, so that it is never rotated into
#: ``checkpoint.prev.pt``.
ABANDONED = "checkpoint.abandoned.pt"


def package_versions() -> dict[str, str]:
    """Python's and the packages' versions, as config.json, checkpoints and reports record them."""
    found = {"python": platform.python_version()}
    for name in ("metaopt", "torch", "torchopt", "numpy", "gymnasium"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "not installed"
    return found


def new_directory(path: Path, flag: str, if_not_empty: str) -> Path:
    """``path`` as a new or empty directory (created with its parents) for a command's output.

    Raises:
        ConfigError: naming ``flag``, when ``path`` is a file, cannot be created, or is a
            directory with something in it (the message ends with ``if_not_empty``, what to do).
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{flag} {str(path)!r} exists and is not a directory")
    if path.is_dir() and any(path.iterdir()):
        raise ConfigError(f"{flag} {str(path)!r} is not empty; {if_not_empty}")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ConfigError(f"{flag} {str(path)!r} cannot be created: {error}") from None
    return path


def new_run_dir(family: TaskFamily, config: TrainConfig, world_size: int, owned: ExitStack) -> Path:
    """A new run directory (``config.out``, or ``runs/<family>-<algo>-<time>``) with its
    ``config.json``: what produced the run. Its lock is entered on ``owned``.

    Two processes given the same ``--out`` cannot both start a run there: ``mkdir`` creates the
    directory for one of them, the lock (taken before looking inside) admits one at a time, and
    whoever comes second finds ``config.json`` (or the lock held) and is refused. A directory
    holding only a stale lock file or temporary files counts as empty.
    """
    if config.out is not None:
        path = Path(config.out)
    else:
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        path = Path("runs") / f"{family.name}-{config.algo}-{stamp}"
    if path.exists() and not path.is_dir():
        raise ConfigError(f"--out {str(path)!r} exists and is not a directory")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.mkdir(exist_ok=True)  # atomic: of two processes, one creates it, neither fails
    except OSError as error:
        raise ConfigError(f"--out {str(path)!r} cannot be created: {error}") from None
    # Refused before the lock: a directory with anything but a lock file or temporary files
    # in it stays as it is (no lock file left behind); it only fills up, so this stays true.
    if any(not _leftover(entry) for entry in path.iterdir()):
        _refuse_not_empty(path)
    owned.enter_context(RunLock(path))
    remove_temporaries(path)
    if any(entry.name != LOCK_FILE for entry in path.iterdir()):  # filled meanwhile
        _refuse_not_empty(path)
    run_dir = path
    write_json_atomic(
        run_dir / "config.json",
        {
            "family": family.name,
            "config": config.to_dict(),
            "seed": config.seed,
            "versions": package_versions(),
            "command": sys.argv,
            "threads": torch.get_num_threads(),
            "world_size": world_size,
        },
    )
    return run_dir


def _leftover(entry: Path) -> bool:
    """A file an empty run directory may hold: a stale lock, or a killed writer's temporary."""
    return entry.name == LOCK_FILE or is_temporary(entry)


def _refuse_not_empty(path: Path) -> NoReturn:
    """Refuse ``--out path``: continuing there is offered for a run directory only."""
    if (path / "config.json").is_file():
        raise ConfigError(
            f"--out {str(path)!r} is not empty; choose a new directory, or continue the run "
            f"there with --resume {path} (metaopt never overwrites a saved run)"
        )
    raise ConfigError(
        f"--out {str(path)!r} is not empty and is not a metaopt run directory; choose a new or "
        "empty directory"
    )


def check_run_dir(run_dir: Path, label: str = "RUN_DIR") -> Path:
    """``run_dir`` if it is a run directory (it holds a ``config.json``), else a ConfigError that
    names ``label`` and says what it is instead; looks without writing anything there, so a
    command refuses a directory that is not a run before it takes the directory's lock."""
    run_dir = Path(run_dir)
    if not run_dir.exists():
        raise ConfigError(f"{label} {str(run_dir)!r} does not exist")
    if not run_dir.is_dir():
        raise ConfigError(f"{label} {str(run_dir)!r} is not a directory")
    if not (run_dir / "config.json").is_file():
        raise ConfigError(
            f"{label} {str(run_dir)!r} has no config.json; is it a metaopt run directory?"
        )
    return run_dir


def read_run(run_dir: Path) -> dict[str, Any]:
    """The contents of ``run_dir/config.json``, or a ConfigError that says what is wrong."""
    path = run_dir / "config.json"
    if not path.is_file():
        raise ConfigError(
            f"RUN_DIR {str(run_dir)!r} has no config.json; is it a metaopt run directory?"
        )
    try:
        saved = json.loads(path.read_text())
    except ValueError as error:
        raise ConfigError(f"{path} is not valid JSON ({error})") from None
    if not isinstance(saved, dict) or not {"family", "config"} <= set(saved):
        raise ConfigError(f"{path} is not a metaopt config.json (no 'family' and 'config')")
    if not isinstance(saved["family"], str) or not isinstance(saved["config"], dict):
        raise ConfigError(
            f"{path} is damaged: 'family' must be a string and 'config' an object of flag "
            f"values, got {type(saved['family']).__name__} and {type(saved['config']).__name__}"
        )
    return saved


def record_engine(run_dir: Path, engine: str | None) -> None:
    """Write the engine ``meta_backward`` ran on into config.json (``engine_used``), unless it is
    there already (the loop calls this again should ``auto`` fall back to the loop engine)."""
    path = run_dir / "config.json"
    saved = json.loads(path.read_text())
    if saved.get("engine_used") != engine:
        saved["engine_used"] = engine
        write_json_atomic(path, saved)


def record_device(run_dir: Path, device: str) -> None:
    """Write the device the run computes on into config.json (``device_used``: ``--device auto``
    resolved); a resume on another device writes its own."""
    path = run_dir / "config.json"
    saved = json.loads(path.read_text())
    if saved.get("device_used") != device:
        saved["device_used"] = device
        write_json_atomic(path, saved)


def finite_or_none(value: Any) -> Any:
    """JSON has no NaN: a non-finite number is written as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_json(path: Path, data: Any) -> None:
    """Write ``data`` as strict JSON, atomically: an earlier file survives a failed rewrite."""
    atomic_write_bytes(path, _json_text(data).encode())


#: The same function: every JSON file of a run directory is written atomically.
write_json_atomic = write_json


def _json_text(data: Any) -> str:
    """Strict JSON (RFC 8259 has no NaN or Infinity): non-finite numbers are written as null."""
    return json.dumps(_strict(data), indent=2, default=_json_default, allow_nan=False) + "\n"


def _strict(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _strict(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_strict(item) for item in value]
    if isinstance(value, np.generic | torch.Tensor) and getattr(value, "ndim", 0) == 0:
        value = value.item()
    return finite_or_none(value)


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic | torch.Tensor):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")
