"""AdamW with the weight-decay split of Mamba-2's pre-training (appendix F.1: AdamW, weight decay 0.1)."""

from __future__ import annotations

import torch
from torch import nn

# Mamba's SSM parameters are log-rates and skips, not weights: decaying A_log to 0 would push
# every head towards A = -1, and decaying dt_bias would shrink Delta. mamba_ssm marks them
# `_no_weight_decay`; norms' gains and biases are never decayed either.
NO_DECAY_SUFFIXES = ("A_log", "D", "dt_bias", "bias")


def decays(name: str, p: nn.Parameter) -> bool:
    leaf = name.rsplit(".", 1)[-1]
    if leaf in NO_DECAY_SUFFIXES or getattr(p, "_no_weight_decay", False):
        return False
    if ".norm." in f".{name}" or name.endswith("norm_f.weight"):
        return False
    return p.ndim >= 2


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two AdamW groups: [decayed weights, everything else]; tied weights appear once."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():  # named_parameters() yields a tied tensor once
        if not p.requires_grad:
            continue
        (decay if decays(name, p) else no_decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def build_adamw(model: nn.Module, *, lr: float, betas, eps: float, weight_decay: float) -> torch.optim.AdamW:
    return torch.optim.AdamW(param_groups(model, weight_decay), lr=lr, betas=tuple(betas), eps=eps)
