"""Per-step reference recurrences: the test oracles of every op, deliberately slow and obvious, written
from the paper; the one reference of each op for the torch backend's tests and the kernel tests. Not
exported.

h_t = exp(Delta_t A) h_{t-1} + Delta_t B_t x_t^T,  y_t = C_t h_t + D x_t   (paper eq. 10-11)

They compute in the inputs' dtype, at least fp32: float64 inputs give a float64 reference.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def ssd_naive(x, dt, A, B, C, *, D=None, initial_state=None):
    """x [b, T, h, p], dt [b, T, h], A [h], B/C [b, T, g, n], D [h], initial_state [b, h, p, n]
    -> (y [b, T, h, p] in x's dtype, h_T [b, h, p, n]). Head i reads group i // (h/g), as mamba_ssm does."""
    b, T, h, p = x.shape
    g, n = B.shape[-2:]
    f = torch.promote_types(x.dtype, torch.float32)
    Bh = B.to(f).repeat_interleave(h // g, dim=2)  # [b, T, h, n]
    Ch = C.to(f).repeat_interleave(h // g, dim=2)
    state = x.new_zeros(b, h, p, n, dtype=f) if initial_state is None else initial_state.to(f)
    ys = []
    for t in range(T):
        alpha = torch.exp(dt[:, t].to(f) * A.to(f))  # [b, h]
        state = alpha[..., None, None] * state + torch.einsum(
            "bh,bhp,bhn->bhpn", dt[:, t].to(f), x[:, t].to(f), Bh[:, t]
        )
        ys.append(torch.einsum("bhpn,bhn->bhp", state, Ch[:, t]))
    y = torch.stack(ys, dim=1)
    if D is not None:
        y = y + x.to(f) * D.to(f)[:, None]
    return y.to(x.dtype), state


def conv_naive(x, weight, bias, *, initial_state=None):
    """SiLU(causal depthwise conv) through torch's conv1d on [initial state, x]; same contract as ops.conv:
    x [b, T, c], weight [c, k], bias [c], initial_state [b, c, k-1] -> (y [b, T, c], state [b, c, k-1])."""
    b, T, c = x.shape
    k = weight.shape[-1]
    prev = x.new_zeros(b, c, k - 1) if initial_state is None else initial_state
    xp = torch.cat([prev, x.transpose(1, 2)], dim=-1)  # [b, c, T+k-1]
    y = F.conv1d(xp, weight[:, None, :], bias, groups=c)  # [b, c, T]
    return F.silu(y).transpose(1, 2), xp[:, :, -(k - 1) :]


def gated_rmsnorm_naive(y, z, weight, *, eps, group_size):
    """RMSNorm over each group of `group_size` channels of y * SiLU(z), times weight."""
    u = y * F.silu(z)
    g = u.unflatten(-1, (-1, group_size))
    g = g / torch.sqrt(g.pow(2).mean(-1, keepdim=True) + eps)
    return g.flatten(-2) * weight
