"""LM loss per token position on long evaluation text (figures 1, 4, 10; section 4.2).

A model that learned to forget keeps its loss flat past T_train; one that did not sees it
blow up. The paper's criterion (section 4.2): the model has learned to forget iff the loss
beyond T_train never exceeds 2x the maximum loss within T_train (prompts of 1M tokens,
loss averaged over 128 prompts).
"""

from __future__ import annotations

import math
import time
from typing import Callable, Optional

import torch
import torch.nn.functional as F


@torch.no_grad()
def loss_per_position(
    model,
    input_ids: torch.Tensor,
    *,
    chunk_size: int = 4096,
    deadline: Optional[float] = None,
    progress: Optional[Callable[[int], None]] = None,
) -> torch.Tensor:
    """Cross-entropy at every position, averaged over prompts.

    input_ids: [n, T] -> [T-1] fp32, index i = -log p(token_{i+1} | tokens_0..i), so index
    i has seen i+1 tokens. Prompts run one at a time in chunks carrying the state (one
    chunk's logits [1, chunk, V] in memory at once). With a `deadline` (time.monotonic()),
    the prompts done by then are averaged (at least one). `progress(i)` after prompt i.
    """
    if input_ids.dim() != 2 or input_ids.shape[1] < 2:
        raise ValueError(f"input_ids must be [n, T] with T >= 2, got shape {tuple(input_ids.shape)}")
    device = next(model.parameters()).device
    n, T = input_ids.shape
    total = torch.zeros(T - 1, dtype=torch.float64)
    done = 0
    for row in input_ids:
        if done and deadline is not None and time.monotonic() > deadline:
            break
        row = row.to(device)[None]  # [1, T]
        state, parts = None, []
        for s in range(0, T - 1, chunk_size):
            e = min(s + chunk_size, T - 1)
            out = model(row[:, s:e], state=state)
            state = out.state
            # the same (padded-vocabulary) softmax as the training loss
            parts.append(F.cross_entropy(out.logits[0].float(), row[0, s + 1 : e + 1], reduction="none").cpu())
            del out
        total += torch.cat(parts).double()
        done += 1
        if progress is not None:
            progress(done)
    return (total / done).float()


def learned_to_forget(loss_per_position, train_length: int) -> bool:
    """(contract) False iff the loss beyond `train_length` ever exceeds 2x the max loss within it.

    loss_per_position: [T'] (tensor, array or list), index i = the loss after i+1 tokens.
    A non-finite loss beyond T_train counts as exceeding (a diverged model did not forget).
    With nothing beyond T_train the criterion holds vacuously.
    """
    loss = torch.as_tensor(loss_per_position, dtype=torch.float64).flatten()
    if train_length < 1 or train_length > loss.numel():
        raise ValueError(f"train_length must be in [1, {loss.numel()}], got {train_length}")
    within, beyond = loss[:train_length], loss[train_length:]
    if not torch.isfinite(within).all():
        raise ValueError("the loss within train_length is not finite")
    if beyond.numel() == 0:
        return True
    if not torch.isfinite(beyond).all():
        return False
    return bool(beyond.max() <= 2.0 * within.max())


def log_buckets(loss: torch.Tensor, buckets: int) -> tuple[list[int], list[float]]:
    """Mean loss over log-spaced position buckets: (geometric centre positions, means), empty buckets left out.

    Positions are 1-based context sizes (index i -> position i+1).
    """
    n = loss.numel()
    edges = torch.logspace(0, math.log10(n + 1), buckets + 1, dtype=torch.float64).floor().long().tolist()
    centres, means = [], []
    for lo, hi in zip(edges[:-1], edges[1:]):
        if hi <= lo:
            continue
        centres.append(int(round(math.sqrt(lo * (hi - 1)))) if hi - 1 > lo else lo)
        means.append(float(loss[lo - 1 : hi - 1].mean()))
    return centres, means


def loss_summary(loss: torch.Tensor, train_length: int, *, buckets: int = 24) -> dict:
    """Scalars for a loss-vs-position curve [T'] and the section-4.2 verdict."""
    loss = torch.as_tensor(loss, dtype=torch.float32)
    n = loss.numel()
    tl = min(train_length, n)
    within, beyond = loss[:tl], loss[tl:]
    centres, means = log_buckets(loss, buckets)
    max_within = float(within.max())
    max_beyond = float(beyond.max()) if beyond.numel() else None
    return {
        "train_length": train_length,
        "positions": n,
        "max_within": max_within,
        "mean_within": float(within.mean()),
        "max_beyond": max_beyond,
        "mean_beyond": float(beyond.mean()) if beyond.numel() else None,
        "beyond_over_within": (max_beyond / max_within) if max_beyond is not None and max_within > 0 else None,
        "learned_to_forget": learned_to_forget(loss, tl),
        "bucket_positions": centres,
        "bucket_loss": means,
    }

