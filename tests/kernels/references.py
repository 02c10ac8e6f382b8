"""Independent references for the kernel tests: per-step loops in float64, written from the paper."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def ssd_naive(x, dt, A, B, C, D=None, initial_state=None):
    """h_t = exp(Delta_t A) h_{t-1} + Delta_t x_t B_t^T,  y_t = h_t C_t + D x_t, one step at a time.

    x [b, T, h, p], dt [b, T, h], A [h], B/C [b, T, g, n], D [h], initial_state [b, h, p, n]
    -> y [b, T, h, p], h_T [b, h, p, n]. Head i reads group i // (h/g), as mamba_ssm does.
    """
    b, T, h, p = x.shape
    r = h // B.shape[2]
    Bh, Ch = B.repeat_interleave(r, dim=2), C.repeat_interleave(r, dim=2)  # [b, T, h, n]
    state = initial_state if initial_state is not None else x.new_zeros(b, h, p, B.shape[-1])
    ys = []
    for t in range(T):
        alpha = torch.exp(dt[:, t] * A)  # [b, h]
        state = alpha[:, :, None, None] * state + torch.einsum("bh,bhp,bhn->bhpn", dt[:, t], x[:, t], Bh[:, t])
        y = torch.einsum("bhpn,bhn->bhp", state, Ch[:, t])
        if D is not None:
            y = y + D[:, None] * x[:, t]
        ys.append(y)
    return torch.stack(ys, dim=1), state


def gated_rmsnorm_ref(y, z, weight, eps, group_size):
    """RMSNorm over each group of `group_size` channels of y * SiLU(z), times weight."""
    u = y * F.silu(z)
    g = u.unflatten(-1, (-1, group_size))
    g = g / torch.sqrt(g.pow(2).mean(-1, keepdim=True) + eps)
    return g.flatten(-2) * weight


def causal_conv1d_ref(x, weight, bias, initial_state):
    """SiLU(depthwise causal conv) via F.conv1d on [initial state, x]; x [b, T, c], weight [c, k]."""
    c, k = weight.shape
    xs = torch.cat([initial_state, x.transpose(1, 2)], dim=-1)  # [b, c, k-1+T]
    y = F.conv1d(xs, weight[:, None, :], bias, groups=c)  # [b, c, T]
    return F.silu(y).transpose(1, 2), xs[:, :, -(k - 1) :]
