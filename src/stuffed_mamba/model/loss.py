"""Chunked cross-entropy: the LM loss without a [B, T, V] logits tensor (section 5).

At T = 256K and V = 50K, fp32 logits alone would take 51 GB per row. Each chunk's logits are made,
reduced to a loss sum and freed; under autograd the chunk is recomputed in backward (checkpoint),
so peak memory holds one chunk's logits and their gradient, whatever T is.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

IGNORE_INDEX = -100


def _chunk_loss_sum(hidden: torch.Tensor, head: torch.Tensor | nn.Module, labels: torch.Tensor) -> torch.Tensor:
    logits = (head(hidden) if isinstance(head, nn.Module) else F.linear(hidden, head)).float()  # [n, V]
    return F.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX, reduction="sum")


def chunked_cross_entropy(
    hidden: torch.Tensor, head: torch.Tensor | nn.Module, labels: torch.Tensor, *, chunk_tokens: int = 4096
) -> torch.Tensor:
    """Mean CE of `hidden @ weight.T` against `labels` over positions whose label != -100.

    hidden: [B, T, d], head: the weight [V, d] or the LM head module (a Linear d -> V), labels: [B, T]
    (labels[b, t] is the target of position t). The model passes its module: the chunk is recomputed
    in backward, and a wrapper that partitions parameters (DeepSpeed ZeRO-3) gathers a weight only
    when its module is called.
    """
    weight = head.weight if isinstance(head, nn.Module) else head
    h = hidden.reshape(-1, hidden.shape[-1])
    y = labels.reshape(-1)
    count = (y != IGNORE_INDEX).sum()
    total = hidden.new_zeros((), dtype=torch.float32)
    for i in range(0, h.shape[0], chunk_tokens):
        hi, yi = h[i : i + chunk_tokens], y[i : i + chunk_tokens]
        if torch.is_grad_enabled() and (hi.requires_grad or weight.requires_grad):
            total = total + checkpoint(_chunk_loss_sum, hi, head, yi, use_reentrant=False)
        else:
            total = total + _chunk_loss_sum(hi, head, yi)
    return total / count.clamp_min(1)
