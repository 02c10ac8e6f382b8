"""What the data tests do to a loader again and again: stop it, save its state through a
checkpoint's serialisation, restore it in a new loader and continue; and count rows as a multiset."""

from __future__ import annotations

import io
import itertools
from collections import Counter
from dataclasses import dataclass

import torch
from stuffed_mamba.data import build_dataloader


def roundtrip(state):
    """Through torch.save / torch.load(weights_only=True), as in a Lightning checkpoint."""
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


@dataclass
class Resumed:
    reference: list  # n episodes of an uninterrupted loader
    episodes: list  # k episodes, stop, restore, n - k more
    reference_loader: object
    loader: object  # the restored one
    state: dict  # the state it was restored from
    counters_at_stop: dict


def stop_and_resume(cfg, n: int, k: int) -> Resumed:
    ref_loader = build_dataloader(cfg)
    reference = list(itertools.islice(ref_loader, n))
    first = build_dataloader(cfg)
    it = iter(first)
    head = [next(it) for _ in range(k)]
    state = roundtrip(first.state_dict())
    at_stop = first.counters()
    del it, first  # its workers end here
    resumed = build_dataloader(cfg)
    resumed.load_state_dict(state)
    tail = list(itertools.islice(resumed, n - k))
    return Resumed(reference, head + tail, ref_loader, resumed, state, at_stop)


def same_episodes(a: list, b: list) -> bool:
    return len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def rows(episodes) -> Counter:
    """Every row of every episode, as bytes: equal multisets mean nothing lost or repeated."""
    return Counter(bytes(row.numpy().tobytes()) for ep in episodes for row in ep)
