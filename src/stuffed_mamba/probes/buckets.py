"""Log-spaced position buckets of a per-position curve: what the loss-by-position summary reports and
what its plot draws (figures 1, 4, 10 of the paper use a log x axis)."""

from __future__ import annotations

import math

import torch


def log_buckets(loss: torch.Tensor, buckets: int) -> tuple[list[int], list[float]]:
    """Mean loss over log-spaced position buckets: (geometric centre positions, means), empty buckets left out.

    Positions are 1-based context sizes (index i -> position i+1).
    """
    n = loss.numel()
    edges = torch.logspace(0, math.log10(n + 1), buckets + 1, dtype=torch.float64).floor().long().tolist()
    centres, means = [], []
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        if hi <= lo:
            continue
        centres.append(int(round(math.sqrt(lo * (hi - 1)))) if hi - 1 > lo else lo)
        means.append(float(loss[lo - 1 : hi - 1].mean()))
    return centres, means
