"""RMSNorm and Mamba-2's gated RMSNorm (per group, gate before the norm)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """weight * x / sqrt(mean(x^2) + eps), computed in fp32, returned in x's dtype."""
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return (weight.float() * xf).to(x.dtype)


def gated_rmsnorm(
    y: torch.Tensor, z: torch.Tensor, weight: torch.Tensor, *, eps: float, group_size: int
) -> torch.Tensor:
    """RMSNorm_per_group(y * SiLU(z)) * weight (op contract; mamba_ssm's norm_before_gate=False).

    y, z: [..., d_inner]; the RMS is taken over each group of `group_size` channels, since B and C
    are shared by the heads of a group and the norm must not mix groups (tensor parallel splits them).
    """
    shape = y.shape
    u = y.float() * F.silu(z.float())
    u = u.view(*shape[:-1], shape[-1] // group_size, group_size)
    u = u * torch.rsqrt(u.pow(2).mean(-1, keepdim=True) + eps)
    return (u.view(shape) * weight.float()).to(y.dtype)
