"""Checkpoints that a crash cannot corrupt, and that say so when something else did.

A checkpoint file is what ``torch.save`` writes (a zip archive), with a one-line header as the
archive's comment, at the end of the file:

    <torch.save bytes>METAOPT-CHECKPOINT {"format": 2, "bytes": 81234, "sha256": "9f2c..."}

so that ``torch.load(path, weights_only=True)`` reads it as it is, and `load_checkpoint`
tells a truncated file (the end, and the header with it, missing), a corrupt one (checksum
mismatch: ``torch.load`` alone misses most flipped bytes) and one of another format version apart,
before anything is unpickled; it reads the payload with ``torch.load(weights_only=True)`` too, so a
checkpoint cannot run code. ``bytes`` and ``sha256`` are those of the archive without its comment.
Checkpoints written before the header moved to the end (the header as the file's first line, then
the payload) load as well.

`save_checkpoint` writes to a temporary file in the same directory, fsyncs it and renames it
over the target, so the target is always either the old or the new checkpoint, never half of one.
With ``keep_previous`` the checkpoint it replaces becomes ``<stem>.prev<suffix>`` (hard-linked
before the rename, so a complete latest checkpoint exists at every instant).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "CHECKPOINT_VERSION",
    "CheckpointError",
    "atomic_write_bytes",
    "encode_checkpoint",
    "is_temporary",
    "load_checkpoint",
    "previous_path",
    "remove_temporaries",
    "save_checkpoint",
]

#: Format version written into every checkpoint; a checkpoint of another version is refused.
CHECKPOINT_VERSION = 2

_MAGIC = b"METAOPT-CHECKPOINT "
_MAX_HEADER = 4096


class CheckpointError(ValueError):
    """A checkpoint file is missing, truncated, corrupt or of an incompatible format version."""


def atomic_write_bytes(path: Path, data: bytes, *, keep_as: Path | None = None) -> None:
    """Write to a temporary file in the same directory, fsync, then rename over ``path``.

    With ``keep_as``, the file being replaced (if any) keeps that name too; the new file is
    complete on disk before the old one moves.

    An I/O error (no space, file too large, read-only) leaves ``path`` as it was, removes the
    temporary file and is raised with ``path`` as its file name, so the one-line message the
    command prints names the file being written.
    """
    path = Path(path)
    tmp: str | None = None
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=_TEMPORARY)
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp's 0600 would hide the run from other users
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        if keep_as is not None and path.exists():
            _link_over(path, keep_as)
        os.replace(tmp, path)
    except BaseException as error:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        if isinstance(error, OSError) and error.errno is not None and error.filename is None:
            raise OSError(error.errno, os.strerror(error.errno), str(path)) from error
        raise
    _fsync_directory(path.parent)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


#: How every temporary file of `atomic_write_bytes` ends (they also start with a dot).
_TEMPORARY = ".tmp"


def remove_temporaries(directory: Path) -> list[Path]:
    """Delete the temporary files that a process killed inside `atomic_write_bytes` left in
    ``directory`` (``.<name>.<random>.tmp``); the caller must own the directory (its lock), so
    that no live writer's file is removed. Returns what was deleted."""
    removed = []
    for path in Path(directory).iterdir():
        if is_temporary(path) and path.is_file():
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def is_temporary(path: Path) -> bool:
    """Whether ``path`` is named as the temporary files of ``atomic_write_bytes`` are."""
    return path.name.startswith(".") and path.name.endswith(_TEMPORARY)


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def previous_path(path: Path) -> Path:
    """Where `save_checkpoint` keeps the checkpoint it replaced: ``checkpoint.prev.pt``."""
    path = Path(path)
    return path.with_name(f"{path.stem}.prev{path.suffix}")


def encode_checkpoint(state: dict[str, Any]) -> bytes:
    """The bytes of a checkpoint file holding ``state`` plus the format version: ``torch.save``'s
    archive with the header as its comment."""
    buffer = io.BytesIO()
    torch.save({"version": CHECKPOINT_VERSION, **state}, buffer)
    payload = buffer.getvalue()
    if payload[-_EOCD_SIZE : -_EOCD_SIZE + 4] != _EOCD or payload[-2:] != b"\0\0":
        raise RuntimeError("torch.save wrote no zip archive without a comment; cannot add one")
    header = {
        "format": CHECKPOINT_VERSION,
        "bytes": len(payload),
        "sha256": hashlib.sha256(payload).hexdigest(),
    }
    comment = _MAGIC + json.dumps(header).encode()
    return payload[:-2] + len(comment).to_bytes(2, "little") + comment


def save_checkpoint(path: Path, state: dict[str, Any], *, keep_previous: bool = False) -> None:
    """Save ``state`` to ``path`` atomically.

    Args:
        path: The checkpoint file.
        state: Tensors, numbers, strings and containers of them (what ``torch.load`` reads with
            ``weights_only=True``).
        keep_previous: Keep the checkpoint being replaced as `previous_path` ``(path)``.
            The new file is complete on disk before the old one moves.
    """
    keep_as = previous_path(path) if keep_previous else None
    atomic_write_bytes(path, encode_checkpoint(state), keep_as=keep_as)


def _link_over(source: Path, target: Path) -> None:
    """Make ``target`` another name of ``source`` (atomically replacing ``target``)."""
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    os.unlink(tmp)
    try:
        os.link(source, tmp)
    except OSError:  # no hard links on this file system: move it (latest briefly absent)
        os.replace(source, target)
        return
    try:
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load and verify a checkpoint written by `save_checkpoint`: the state it holds (a
    dict of tensors, numbers, strings and containers of them; ``torch.load(path,
    weights_only=True)`` reads the same, without the checks).

    Raises:
        FileNotFoundError: when ``path`` does not exist.
        CheckpointError: when the file is truncated, corrupt, not a metaopt checkpoint or of
            another format version; the message says which.
    """
    path = Path(path)
    data = path.read_bytes()
    if data.startswith(_MAGIC):  # the header first: checkpoints of metaopt 0.1.0 until now
        end = data.find(b"\n", 0, _MAX_HEADER)
        header = data[len(_MAGIC) : end] if end > 0 else None
        payload = data[end + 1 :]
    else:
        header, payload = _trailer(path, data)
    try:
        parsed: Any = json.loads(header) if header is not None else None
        expected, digest, found = int(parsed["bytes"]), str(parsed["sha256"]), parsed["format"]
    except (ValueError, TypeError, KeyError):
        raise CheckpointError(f"checkpoint {path} is corrupt (unreadable header)") from None
    if found != CHECKPOINT_VERSION:
        raise CheckpointError(
            f"checkpoint {path} has format version {found!r}; this metaopt reads version "
            f"{CHECKPOINT_VERSION}"
        )
    if len(payload) < expected:
        raise CheckpointError(
            f"checkpoint {path} is truncated ({len(payload)} of {expected} bytes)"
        )
    if len(payload) > expected or hashlib.sha256(payload).hexdigest() != digest:
        raise CheckpointError(f"checkpoint {path} is corrupt (checksum mismatch)")
    try:
        state = torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
    except Exception as error:  # a valid checksum over an unreadable payload: a bug, or foreign
        raise CheckpointError(f"checkpoint {path} cannot be read ({error})") from error
    if not isinstance(state, dict) or state.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(f"checkpoint {path} holds no version-{CHECKPOINT_VERSION} state")
    return state


#: How a zip archive starts, and its end-of-central-directory record (22 bytes and the comment).
_ZIP = b"PK\x03\x04"
_EOCD = b"PK\x05\x06"
_EOCD_SIZE = 22


def _trailer(path: Path, data: bytes) -> tuple[bytes, bytes]:
    """(header, payload) of a checkpoint whose header is its archive's comment; the payload is the
    archive as ``torch.save`` wrote it (no comment)."""
    start = data.rfind(_MAGIC, max(0, len(data) - _MAX_HEADER))
    eocd = start - _EOCD_SIZE
    if start < 0 or eocd < 0 or data[eocd : eocd + 4] != _EOCD:
        if data.startswith(_ZIP) and data[-_EOCD_SIZE : -_EOCD_SIZE + 4] != _EOCD:
            raise CheckpointError(
                f"checkpoint {path} is truncated ({len(data)} bytes; its end is missing)"
            )
        raise CheckpointError(
            f"checkpoint {path} is not a metaopt checkpoint of format version "
            f"{CHECKPOINT_VERSION} (no header; written by an older metaopt, or not a checkpoint)"
        )
    comment = data[start:]
    declared = int.from_bytes(data[start - 2 : start], "little")
    if declared > len(comment):
        raise CheckpointError(
            f"checkpoint {path} is truncated ({len(data)} bytes; its end is missing)"
        )
    if declared < len(comment):
        raise CheckpointError(f"checkpoint {path} is corrupt (unreadable header)")
    return comment[len(_MAGIC) :], data[: start - 2] + b"\0\0"
