"""Task isolation: adapt a model to one task, then put everything back exactly as it was."""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torchopt
from torch import nn

__all__ = ["MISNESTED", "OneThread", "isolated", "leave_in_order", "naming_task"]


@contextmanager
def isolated(model: nn.Module, *optimizers: torchopt.MetaOptimizer) -> Iterator[Callable[[], None]]:
    """On exit, restore ``model``'s parameters, buffers, train/eval modes and the optimisers.

    Yields a ``restore()`` function that puts everything back at once, for a loop over tasks
    inside one ``with`` block (extracting once per meta-batch, as TorchOpt's examples do).

    The one place where metaopt uses TorchOpt's ``extract_state_dict`` / ``recover_state_dict``
    (TorchOpt's own examples call the pair around every task). Parameters are kept by reference,
    so the original ``nn.Parameter`` objects (and the ``.grad`` a meta-gradient accumulates into)
    come back; buffers are copied, because BatchNorm updates its running statistics in place and
    a reference would see those updates. Restoration happens in a ``finally`` block, so an
    exception inside the body leaves the model as it found it.

    Args:
        model: The module whose parameters an inner loop will replace.
        *optimizers: Differentiable (TorchOpt) optimisers whose state the inner loop advances.
    """
    model_state = torchopt.extract_state_dict(model, by="reference", detach_buffers=True)
    optimizer_states = [torchopt.extract_state_dict(opt, by="reference") for opt in optimizers]
    modes = [(module, module.training) for module in model.modules()]
    recurrent = [module for module, _ in modes if isinstance(module, nn.RNNBase)]

    def restore() -> None:
        # recover_state_dict copies buffers again (detach_buffers), so restoring twice is safe.
        torchopt.recover_state_dict(model, model_state)
        for opt, state in zip(optimizers, optimizer_states, strict=True):
            torchopt.recover_state_dict(opt, state)
        for module, training in modes:
            module.training = training
        for module in recurrent:
            # An RNN caches its weights in _flat_weights; recover_state_dict bypasses the
            # __setattr__ that refreshes it, which would keep the last task's graph alive.
            module._init_flat_weights()

    try:
        yield restore
    finally:
        restore()


#: What leaving nested ``adapt`` contexts out of order raises.
MISNESTED = (
    "adapt contexts were left out of order: an outer adapt() exited while one entered inside it "
    "was still open; the model is restored to its state before the outer one (leave nested "
    "adapt() blocks innermost first)"
)

_CHECK = threading.Lock()  # makes each guard's check-and-claim atomic; held for microseconds


class OneThread:
    """One thread at a time may use a learner (and the model it adapts in place).

    ``meta_backward`` and ``adapt`` swap adapted parameters into the model; a second thread
    entering meanwhile would read or restore the first one's parameters (wrong losses, a model
    left adapted, an unusable graph). `held` claims the learner for the calling thread,
    re-entrantly, and raises in any other thread *before* it touches the model, so the first
    caller goes on undisturbed and the model stays exactly as it was.
    """

    def __init__(self) -> None:
        self.owner: int | None = None
        self.depth = 0

    @staticmethod
    def guard(cls: type, name: str) -> None:
        """Make method ``name`` of ``cls``, if ``cls`` defines it, run under the learner's guard
        (its ``_one_thread``)."""
        method = cls.__dict__.get(name)
        if method is None or getattr(method, "_guarded", False):
            return

        @functools.wraps(method)
        def run(learner: Any, *args: Any, **kwargs: Any) -> Any:
            with learner._one_thread.held(learner.name, method.__name__):
                return method(learner, *args, **kwargs)

        run._guarded = True  # type: ignore[attr-defined]
        setattr(cls, name, run)

    @contextmanager
    def held(self, what: str, call: str) -> Iterator[None]:
        me = threading.get_ident()
        with _CHECK:
            if self.owner is not None and self.owner != me:
                raise RuntimeError(
                    f"{call} was called on a {what} learner that another thread is using (in "
                    "meta_backward or adapt); a learner and its model serve one thread at a "
                    "time: give each thread its own (copy.deepcopy(learner))"
                )
            self.owner = me
            self.depth += 1
        try:
            yield
        finally:
            with _CHECK:
                self.depth -= 1
                if self.depth == 0:
                    self.owner = None


def leave_in_order(open_contexts: list[dict[str, Any]], frame: dict[str, Any]) -> bool:
    """Pop ``frame`` off the learner's open adapt contexts; True when contexts entered after it
    are still open (left out of order). Those are told to restore ``frame``'s state when they
    exit, so the model ends where it was before ``frame``."""
    index = next((i for i, open_frame in enumerate(open_contexts) if open_frame is frame), None)
    if index is None:
        return False
    later = open_contexts[index + 1 :]
    del open_contexts[index:]
    for inner in later:
        inner["then"] = frame.get("then", frame["restore"])
    return bool(later)


@contextmanager
def naming_task(index: int) -> Iterator[None]:
    """Re-raise torch's dtype mismatch inside task ``index``'s work as a TypeError naming the task
    (a meta-batch mixing float32 and float64 tasks otherwise fails with torch's bare message)."""
    try:
        yield
    except RuntimeError as error:
        text = str(error)
        if "dtype" not in text and not ("Double" in text and "Float" in text):
            raise
        raise TypeError(
            f"task {index}: {text.strip().splitlines()[0]}; every task's tensors must have the "
            "model's dtype (a meta-batch mixes float32 and float64?)"
        ) from error
