"""Measuring memory: :class:`LiveTensorMeter`, the peak of live tensor bytes on any device (the CPU analogue of
``torch.cuda.max_memory_allocated``), and :func:`storage_bytes`, the bytes behind a set of tensors.

The memory planner's tests (``tests/test_memory.py``) and ``scripts/gpu_check.py`` measure with these; the planner
itself (:mod:`trl_opd.memory`) is arithmetic and never imports this module.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


__all__ = ["LiveTensorMeter", "storage_bytes"]


def storage_bytes(tensors) -> int:
    """Bytes of the distinct storages behind ``tensors`` (views and tied weights are counted once)."""
    seen, total = set(), 0
    for tensor in tensors:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in seen:
            seen.add(storage.data_ptr())
            total += storage.nbytes()
    return total


class LiveTensorMeter:
    """Peak bytes of live tensors created inside a ``with`` block, on any device: the CPU analogue of
    ``torch.cuda.max_memory_allocated`` (without the allocator's rounding).

    Every tensor an operator returns is recorded by its storage; a storage counts until it is freed. Storages that
    existed before (parameters, inputs) count only if :meth:`ignore` was not told about them and an operator returns
    a view of them, so pass them to :meth:`ignore` first. Memory allocated inside an operator's kernel and freed
    before it returns (workspaces) is not seen. Use ``reset_peak()`` between phases::

        meter = LiveTensorMeter().ignore(model.parameters())
        with meter:
            loss = model(**batch).loss
            forward_peak = meter.peak
            meter.reset_peak()
            loss.backward()
        backward_peak = meter.peak  # bytes above what existed before the block
    """

    def __init__(self):
        meter = self

        class _Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                out = func(*args, **(kwargs or {}))
                meter._record(out)
                return out

        self._mode = _Mode()
        self._known: dict[int, Any] = {}
        self.live = 0
        self.peak = 0

    def ignore(self, tensors: Iterable) -> LiveTensorMeter:
        """Treat the storages of these tensors as pre-existing: never counted."""
        for t in tensors:
            st = t.untyped_storage()
            key = st.data_ptr()
            if key not in self._known:
                self._known[key] = weakref.ref(st, lambda _ref, key=key: self._known.pop(key, None))
        return self

    def _record(self, out) -> None:
        for t in tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor) or t.device.type == "meta":
                continue
            st = t.untyped_storage()
            key, nbytes = st.data_ptr(), st.nbytes()
            if key in self._known or nbytes == 0:
                continue

            def freed(_ref, key=key, nbytes=nbytes):
                self.live -= nbytes
                self._known.pop(key, None)

            self._known[key] = weakref.ref(st, freed)
            self.live += nbytes
            self.peak = max(self.peak, self.live)

    def reset_peak(self) -> None:
        """Start a new peak from the bytes live now."""
        self.peak = self.live

    def __enter__(self) -> LiveTensorMeter:
        self._mode.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._mode.__exit__(*exc)
