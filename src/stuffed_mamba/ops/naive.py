"""Per-step reference recurrences: test oracles, deliberately slow and obvious. Not exported.

h_t = exp(Delta_t A) h_{t-1} + Delta_t B_t x_t^T,  y_t = C_t h_t + D x_t   (paper eq. 10-11)
"""

from __future__ import annotations

import torch


def ssd_naive(x, dt, A, B, C, *, D=None, initial_state=None):
    """x [b, T, h, p], dt [b, T, h], A [h], B/C [b, T, g, n] -> (y [b, T, h, p], h_T [b, h, p, n])."""
    b, T, h, p = x.shape
    g, n = B.shape[-2:]
    Bh = B.float().repeat_interleave(h // g, dim=2)  # [b, T, h, n]
    Ch = C.float().repeat_interleave(h // g, dim=2)
    state = x.new_zeros(b, h, p, n, dtype=torch.float32) if initial_state is None else initial_state.float()
    ys = []
    for t in range(T):
        alpha = torch.exp(dt[:, t].float() * A.float())  # [b, h]
        state = alpha[..., None, None] * state + torch.einsum(
            "bh,bhp,bhn->bhpn", dt[:, t].float(), x[:, t].float(), Bh[:, t]
        )
        ys.append(torch.einsum("bhpn,bhn->bhp", state, Ch[:, t]))
    y = torch.stack(ys, dim=1)
    if D is not None:
        y = y + x.float() * D.float()[:, None]
    return y.to(x.dtype), state


def conv_naive(x, weight, bias, *, initial_state=None):
    """Causal depthwise conv through torch's conv1d on the concatenated history; same contract as ops.conv."""
    b, T, c = x.shape
    k = weight.shape[-1]
    prev = x.new_zeros(b, c, k - 1) if initial_state is None else initial_state
    xp = torch.cat([prev, x.transpose(1, 2)], dim=-1)  # [b, c, T+k-1]
    y = torch.nn.functional.conv1d(xp, weight[:, None, :], bias, groups=c)  # [b, c, T]
    return torch.nn.functional.silu(y).transpose(1, 2), xp[:, :, -(k - 1) :]
