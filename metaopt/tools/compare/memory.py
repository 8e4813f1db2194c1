"""The bytes autograd keeps saved for the backward pass: `SavedTensorMeter`."""

from __future__ import annotations

from contextlib import AbstractContextManager
from types import TracebackType

import torch

__all__ = ["SavedTensorMeter"]


class _Saved:
    """What the pack hook hands autograd: the tensor, and a release of its bytes when freed."""

    __slots__ = ("key", "meter", "tensor")

    def __init__(self, meter: SavedTensorMeter, key: int, tensor: torch.Tensor) -> None:
        self.meter, self.key, self.tensor = meter, key, tensor

    def __del__(self) -> None:
        self.meter._release(self.key)


class SavedTensorMeter(AbstractContextManager["SavedTensorMeter"]):
    """Peak bytes of the tensors autograd keeps for backward, while the context is active.

    Every tensor an operation saves for its backward pass goes through a
    ``torch.autograd.graph.saved_tensors_hooks`` pack hook; the meter counts the bytes of its
    storage (once per storage, however many operations save it) from then until the graph that
    holds it is freed. The peak is what second-order MAML's graph through the inner steps costs
    on top of the model and the data: deterministic, independent of the allocator, CPU or GPU.
    It does not count activations that are not saved, gradients or optimiser state.
    """

    def __init__(self) -> None:
        self.live_bytes = 0
        self.peak_bytes = 0
        self._counts: dict[int, int] = {}
        self._sizes: dict[int, int] = {}
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack)

    def _pack(self, tensor: torch.Tensor) -> _Saved:
        try:
            storage = tensor.untyped_storage()
            key, size = storage.data_ptr(), storage.nbytes()
        except (RuntimeError, NotImplementedError):  # tensors without a plain storage
            key, size = id(tensor), tensor.numel() * tensor.element_size()
        if self._counts.get(key, 0) == 0:
            self._sizes[key] = size
            self.live_bytes += size
            self.peak_bytes = max(self.peak_bytes, self.live_bytes)
        self._counts[key] = self._counts.get(key, 0) + 1
        return _Saved(self, key, tensor)

    @staticmethod
    def _unpack(saved: _Saved) -> torch.Tensor:
        return saved.tensor

    def _release(self, key: int) -> None:
        self._counts[key] -= 1
        if self._counts[key] == 0:
            self.live_bytes -= self._sizes.pop(key)
            del self._counts[key]

    def __enter__(self) -> SavedTensorMeter:
        self._hooks.__enter__()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._hooks.__exit__(kind, error, traceback)
