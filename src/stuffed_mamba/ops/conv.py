"""Causal depthwise conv1d with state in and out (the "short convolution" of appendix A.2)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def causal_conv1d(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    *,
    initial_state: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """y_t = SiLU(bias + sum_j w_j x_{t-k+1+j}) per channel (op contract shared by every backend).

    Args:
        x: [b, T, c] channels last, as in_proj produces them
        weight: [c, k] the depthwise kernel (conv1d.weight squeezed)
        bias: [c] or None
        initial_state: [b, c, k-1], the last k-1 inputs before this call (oldest first); None = zeros
    Returns:
        y: [b, T, c], final_state: [b, c, k-1] (the last k-1 inputs, older state included if T < k-1)
    """
    b, T, c = x.shape
    k = weight.shape[-1]
    if initial_state is None:
        prev = x.new_zeros(b, k - 1, c)
    else:
        prev = initial_state.transpose(1, 2).to(x.dtype)
    xp = torch.cat([prev, x], dim=1)  # [b, T+k-1, c]
    # k shifted multiply-adds in [b, T, c] layout: on CPU this beats transpose + conv1d + transpose
    # (channels are contiguous, no copies), and it is the same arithmetic.
    y = xp[:, 0:T] * weight[:, 0]
    for j in range(1, k):
        y = y + xp[:, j : j + T] * weight[:, j]
    if bias is not None:
        y = y + bias
    final_state = xp[:, T:].transpose(1, 2).contiguous()  # [b, c, k-1]
    return F.silu(y), final_state


def causal_conv1d_step(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, state: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """One step: x [b, c], state [b, c, k-1] -> (SiLU(conv) [b, c], new state [b, c, k-1])."""
    window = torch.cat([state.to(x.dtype), x[:, :, None]], dim=-1)  # [b, c, k]
    y = (window * weight).sum(-1)
    if bias is not None:
        y = y + bias
    return F.silu(y), window[:, :, 1:]
