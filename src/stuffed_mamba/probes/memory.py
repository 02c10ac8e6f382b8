"""Peak memory of live tensors created inside a block, on any device (the passkey memory check).

On CPU there is no allocator counter like `torch.cuda.max_memory_allocated`, and the
process RSS mixes in the C allocator's caching. `TensorPeak` follows every tensor that an
op creates inside the block (a TorchDispatchMode), counts each storage once while any tensor
still refers to it, and keeps the high-water mark: the memory a computation really needs,
independent of allocator behaviour. Tensors that existed before the block are not counted.
"""

from __future__ import annotations

import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


class TensorPeak(TorchDispatchMode):
    """with TensorPeak() as m: ...; m.peak_bytes, m.live_bytes."""

    def __init__(self):
        super().__init__()
        self.live_bytes = 0
        self.peak_bytes = 0
        self._refs: dict[int, list] = {}  # storage ptr -> [tensors alive, nbytes]

    def _release(self, key: int) -> None:
        entry = self._refs.get(key)
        if entry is None:
            return
        entry[0] -= 1
        if entry[0] == 0:
            self.live_bytes -= entry[1]
            del self._refs[key]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {
            a.untyped_storage().data_ptr()
            for a in tree_flatten((args, kwargs))[0]
            if isinstance(a, torch.Tensor) and a.device.type != "meta"
        }
        for t in tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor) or t.device.type == "meta":
                continue
            storage = t.untyped_storage()
            key = storage.data_ptr()
            if key == 0:
                continue
            entry = self._refs.get(key)
            if entry is None:
                if key in inputs:  # a view of, or in-place op on, a tensor from before the block
                    continue
                entry = self._refs[key] = [0, storage.nbytes()]
                self.live_bytes += entry[1]
                self.peak_bytes = max(self.peak_bytes, self.live_bytes)
            entry[0] += 1
            weakref.finalize(t, self._release, key)
        return out
