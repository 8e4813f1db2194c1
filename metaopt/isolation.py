"""Task isolation: adapt a model to one task, then put everything back exactly as it was."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torchopt
from torch import nn

__all__ = ["isolated"]


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
