"""Checks of configuration values whose errors name the setting, the value and what is allowed.

One helper for every place a value enters: the algorithms' constructors (``inner_lr``), the
configuration dataclasses of the ``metaopt`` command (``--inner-lr``, `flag` gives a
field's flag) and the domains' own settings. Each check raises
[`ConfigError`][metaopt.training.ConfigError], a ``ValueError``, with one message shape:

    --shots must be an integer between 1 and 50, got 60
    --inner-lr must be a positive finite number, got 0.0
    --activation must be one of relu, tanh; got 'gelu'

The allowed values of a choice come from the constant that defines them (``ENGINES``,
``INNER_OPTIMIZERS``, ``ALGORITHMS``), never from a literal copied next to the check. This module
imports nothing heavier than the standard library, so a configuration validates without torch.

`option` is the dataclass field that documents itself as a flag (the run's config, the tools'
options and each algorithm's options use it), and `reader` / `tuple_reader` read a flag's text
with the same checks, for argparse.
"""

from __future__ import annotations

import argparse
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import field
from typing import Any, TypeVar

__all__ = [
    "ALGORITHMS",
    "ALGORITHM_LOOKS",
    "BATCH_NORM_MODES",
    "CURVATURES",
    "DEVICES",
    "ENGINES",
    "INNER_OPTIMIZERS",
    "PRECISIONS",
    "SOLVE_FAILURE_POLICIES",
    "ConfigError",
    "check_bool",
    "check_choice",
    "check_device",
    "check_int",
    "check_real",
    "flag",
    "option",
    "reader",
    "tuple_reader",
]

T = TypeVar("T")

# The choices of the core's settings live here, in a module without torch, so that the command
# line describes them without importing the modules that implement them (which re-export them).

#: The built-in algorithms by their names on the command line: MAML, first-order MAML, Meta-SGD,
#: Reptile, iMAML. Every algorithm, plug-ins included, is `metaopt.registry.algorithm_names`.
ALGORITHMS = ("maml", "fomaml", "metasgd", "reptile", "imaml")

#: How reports name and colour the built-in algorithms: their rules (`metaopt.rules`) and their
#: registry entries (`metaopt.registry`) both read it.
ALGORITHM_LOOKS = {
    "maml": ("MAML (second order)", "C0"),
    "fomaml": ("first-order MAML", "C1"),
    "metasgd": ("Meta-SGD", "C2"),
    "reptile": ("Reptile", "C3"),
    "imaml": ("iMAML", "C4"),
}

#: ``loop``: one task at a time, as the papers write it. ``vmap``: all tasks at once
#: (`metaopt.engine`). ``auto``: ``vmap`` whenever the meta-batch implements
#: `metaopt.task.BatchedTasks` and the vectorised engine computes exactly what the loop
#: engine does on the model (`metaopt.engine.can_vectorise`), else ``loop``. ``compiled``:
#: the vectorised meta-iteration as one ``torch.compile``d function (`metaopt.compiled`),
#: only when asked for: its first call compiles for tens of seconds.
ENGINES = ("auto", "vmap", "loop", "compiled")

#: Optimisers of the inner loop (`metaopt.inner`).
INNER_OPTIMIZERS = ("sgd", "adam")

#: iMAML's ``solver=`` / ``--solver``: the linear solver of `(I + H/\lambda)x = v`.
SOLVERS = ("cg", "minres", "normal_cg")

#: iMAML's ``on_solve_failure=`` / ``--on-solve-failure``: what a linear solve that misses
#: ``cg_tol`` does. ``stop``: raise (training stops); ``skip``: no outer step for that
#: meta-batch; ``damp``: solve again with ``μI`` added, the smallest ``μ`` of a short schedule
#: that converges.
SOLVE_FAILURE_POLICIES = ("stop", "skip", "damp")

#: iMAML's ``curvature=`` / ``--curvature``: the matrix H of ``(I + H/λ)x = v``: the support
#: loss's Hessian, or its Gauss-Newton part (positive semi-definite for a convex loss of the
#: network's outputs).
CURVATURES = ("hessian", "gauss-newton")

#: ``running``: BatchNorm behaves as PyTorch defines it for the mode each layer is in (training:
#: batch statistics, running statistics updated during adaptation and restored afterwards; eval:
#: running statistics). ``batch``: every BatchNorm layer normalises with the statistics of the
#: batch it is given, in training and eval mode, and its running statistics are neither read nor
#: changed (each task normalises with its own batch, as MAML and Reptile do on Omniglot).
BATCH_NORM_MODES = ("running", "batch")

#: ``--device``: where the model, the tasks and the optimiser's state live. ``auto``: CUDA when
#: present (under torchrun each rank its ``cuda:LOCAL_RANK``), else Apple's MPS, else the CPU;
#: ``cuda:N`` names one GPU (`metaopt.training.device`).
DEVICES = ("auto", "cpu", "cuda", "cuda:N", "mps")

#: ``--precision``: ``fp32``, or autocast to ``bf16`` / ``fp16`` around the forward passes
#: (fp16 with a gradient scaler on the outer step).
PRECISIONS = ("fp32", "bf16", "fp16")


class ConfigError(ValueError):
    """A configuration value is out of range; the message names the field, value and what is allowed.

    The ``metaopt`` command prints it on one line and exits with status 2.
    """


def flag(name: str) -> str:
    """The command-line flag of config field ``name``: ``inner_lr`` -> ``--inner-lr``."""
    return "--" + name.replace("_", "-")


#: Metadata of an `option` without help, until its config class gives it the base's help.
HELP_FROM_BASE = "help_from_base"


def option(default: Any, help: str | None = None, **kwargs: Any) -> Any:
    """A dataclass field that documents itself as a command-line flag (``help`` in its metadata).

    Without ``help``, the field must override a base config's field (in a subclass of
    [`TrainConfig`][metaopt.training.TrainConfig] changing a default), with its help and metadata.
    """
    own = {"help": help} if help is not None else {HELP_FROM_BASE: True}
    return field(default=default, metadata={**own, **kwargs.pop("metadata", {})}, **kwargs)


def check_int(label: str, value: object, low: int, high: int | None = None, why: str = "") -> int:
    """``value`` if it is an integer (not a bool) in ``[low, high]``, else
    [`ConfigError`][metaopt.training.ConfigError].

    Args:
        label: How the message names the setting: a flag (``--shots``) or an argument name.
        value: The value to check.
        low: Smallest allowed value.
        high: Largest allowed value (``None``: no bound).
        why: Appended to the allowed range, e.g. ``" (the --grid 50 points of a task)"``.
    """
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= low
    if not ok or (high is not None and value > high):  # type: ignore[operator]
        raise ConfigError(f"{label} must be {_int_range(low, high)}{why}, got {value!r}")
    return value  # type: ignore[return-value]


def _int_range(low: int, high: int | None) -> str:
    return f"an integer {f'>= {low}' if high is None else f'between {low} and {high}'}"


def check_real(
    label: str,
    value: object,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
) -> float:
    """``value`` if it is a finite real number (int or float, not a bool) in the range, else
    [`ConfigError`][metaopt.training.ConfigError].

    Args:
        label: How the message names the setting.
        value: The value to check.
        low: Lower bound (``None``: none); excluded when ``low_open``.
        high: Upper bound, included (``None``: none).
        low_open: Exclude ``low`` itself (``low=0, low_open=True``: a positive number).
    """
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if ok and low is not None:
        ok = value > low if low_open else value >= low  # type: ignore[operator]
    if ok and high is not None:
        ok = value <= high  # type: ignore[operator]
    if not ok:
        raise ConfigError(f"{label} must be {_real_range(low, high, low_open)}, got {value!r}")
    return value  # type: ignore[return-value]


def _real_range(low: float | None, high: float | None, low_open: bool) -> str:
    if high is not None:
        left = "(" if low_open else "["
        return f"in {left}{'-inf' if low is None else f'{low:g}'}, {high:g}]"
    if low is None:
        return "a finite number"
    if low == 0 and low_open:
        return "a positive finite number"
    return f"a finite number {'>' if low_open else '>='} {low:g}"


def check_bool(label: str, value: object) -> bool:
    """``value`` if it is ``True`` or ``False``, else [`ConfigError`][metaopt.training.ConfigError]."""
    if not isinstance(value, bool):
        raise ConfigError(f"{label} must be true or false, got {value!r}")
    return value


def check_choice(label: str, value: T, allowed: Sequence[T]) -> T:
    """``value`` if it is one of ``allowed``, else [`ConfigError`][metaopt.training.ConfigError]
    listing them."""
    if value not in allowed:
        choices = ", ".join(map(str, allowed))
        raise ConfigError(f"{label} must be one of {choices}; got {value!r}")
    return value


def check_device(label: str, value: object) -> str:
    """``value`` if it spells one of `DEVICES` (``cuda:N`` with N a non-negative integer), else
    [`ConfigError`][metaopt.training.ConfigError] listing them. Whether the machine has that
    device is asked of torch later (`metaopt.training.device.resolve_device`)."""
    if not isinstance(value, str) or not re.fullmatch(r"auto|cpu|cuda|cuda:\d+|mps", value):
        raise ConfigError(f"{label} must be one of {', '.join(DEVICES)}; got {value!r}")
    return value


def reader(
    kind: type[int] | type[float], *, low: float | None = None, low_open: bool = False
) -> Callable[[str], Any]:
    """An argparse ``type=``: a flag's text as an ``int`` or ``float``, at least ``low`` (above it
    with ``low_open``) when given, by `check_int` / `check_real`; anything else is argparse's one
    line, ``expected an integer >= 1, got '0'``. Without ``low`` a float may be inf or nan (the
    config's own check names the flag then)."""
    if low is None:
        expected = "an integer" if kind is int else "a number"
    else:
        expected = _int_range(int(low), None) if kind is int else _real_range(low, None, low_open)

    def read(text: str) -> Any:
        try:
            value = kind(text)
            if low is not None and kind is int:
                check_int("", value, int(low))
            elif low is not None:
                check_real("", value, low=low, low_open=low_open)
        except ValueError:  # ConfigError is one
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        return value

    return read


def tuple_reader(kind: type) -> Callable[[str], tuple[Any, ...]]:
    """An argparse ``type=``: comma-separated values of ``kind`` (``"1,2,5"`` -> ``(1, 2, 5)``)."""

    def read(text: str) -> tuple[Any, ...]:
        try:
            return tuple(kind(part) for part in text.split(",") if part.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected comma-separated {kind.__name__} values, got {text!r}"
            ) from None

    return read
