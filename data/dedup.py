"""In-stream exact deduplication with bounded memory.

RedPajama-V2's duplicates lists cover head and middle shards only; this catches exact
repeats elsewhere (tail shards, other mirrors). A 64-bit blake2b hash of the UTF-8 text
per document, the oldest forgotten first once `capacity` hashes are held.
"""

from __future__ import annotations

import hashlib
from collections import deque

import torch


def content_hash(utf8: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(utf8, digest_size=8).digest(), "little", signed=True)


class StreamDedup:
    def __init__(self, capacity: int):
        self.capacity = capacity
        self._order: deque[int] = deque()
        self._seen: set[int] = set()

    def seen(self, utf8: bytes) -> bool:
        """True if this content was seen before; remembers it otherwise."""
        if self.capacity == 0:
            return False
        h = content_hash(utf8)
        if h in self._seen:
            return True
        self._seen.add(h)
        self._order.append(h)
        if len(self._order) > self.capacity:
            self._seen.discard(self._order.popleft())
        return False

    def clear(self) -> None:
        self._order.clear()
        self._seen.clear()

    def state_dict(self) -> torch.Tensor:
        return torch.tensor(list(self._order), dtype=torch.int64)

    def load_state_dict(self, hashes: torch.Tensor) -> None:
        order = hashes.tolist()[-self.capacity :] if self.capacity else []
        self._order = deque(order)
        self._seen = set(order)
