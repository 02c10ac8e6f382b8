"""State-passing context parallelism: one more layer under the op contract.

N consecutive ranks (a context-parallel group) hold the same rows of a segment, rank i the i-th of N
consecutive pieces of its T tokens. The SSD is affine in its initial state. Per head, for rank i's piece
I_i, started from a zero state (rank 0 from the carried initial state h_0):

    a^i      = exp(A * sum_{t in I_i} Delta_t)                          the piece's retention
    h_out^i  = a^i h_in^i + h_loc^i                                     h_loc^i: the piece's own final state
    y_t      = y_loc_t + exp(A * sum_{s in I_i, s <= t} Delta_s) C_t h_in^i        t in I_i

The ranks all-gather their fp32 summaries (log a^i, h_loc^i): O(H P N) per rank, independent of T. The
exclusive scan over the ranks, h_in^i = sum_{j<i} a^{j+1} ... a^{i-1} h_loc^j (h_in^0 = 0: h_0 is already
inside h_loc^0), is the SSD's own inter-block recurrence one level up, so it is `ssd._pass_states` over
the N summaries; it also gives the segment's final state h_out^{N-1} on every rank, which is where the
next segment needs it (no broadcast). The conv takes the previous rank's last k-1 inputs (its halo) from
one all-gather of every rank's last k-1 inputs; the last rank's are the segment's final conv state. The
gated norm is per token: unchanged.

Backward flows through the two all-gathers (`_AllGather`: rank i's gradient is the sum over the ranks of
their gradients for piece i), so d/dh_in and d/dhalo reach the earlier ranks exactly. Every rank must
reach each collective's backward, or the others wait forever. Rank 0's outputs do not depend on the
other ranks, so rank 0 still takes its h_in (zero) and its halo (h_0's conv part) out of the gathered
tensors: its graph, like every rank's, goes through both all-gathers, with zero gradients.

Selection: `install()` makes `ops.get_backend(name)` return `ContextParallelOps(name's module)`; it splits
only inside `split_over(group)` (training steps, their backward and recomputation), and is the plain
backend elsewhere (probes on rank 0, decoding). The model knows nothing of it.

Letters in einsum strings: b batch, t positions of the piece, g group, r heads per group (h = g*r),
p head dim (P), n state dim (N), k ranks of the group.
"""

from __future__ import annotations

import contextlib
from types import ModuleType

import torch
import torch.distributed as dist

from stuffed_mamba.ops.ssd import _pass_states

_INSTALLED = False
# The active group. A module global, not thread-local: CUDA's autograd runs backward (and activation
# checkpointing's recomputation, which calls these ops) on its own threads.
_GROUP: dist.ProcessGroup | None = None


def install(on: bool = True) -> None:
    """From now on `get_backend` returns context-parallel wrappers (call before building the model)."""
    global _INSTALLED
    _INSTALLED = bool(on)


def installed() -> bool:
    return _INSTALLED


@contextlib.contextmanager
def split_over(group: dist.ProcessGroup | None):
    """Inside, wrapped ops treat their inputs as this rank's piece of the group's sequence (None: unsplit)."""
    global _GROUP
    previous, _GROUP = _GROUP, group
    try:
        yield
    finally:
        _GROUP = previous


def active_group() -> dist.ProcessGroup | None:
    """The group ops are split over now; None when there is none or it has a single rank."""
    if _GROUP is None or dist.get_world_size(_GROUP) == 1:
        return None
    return _GROUP


def piece(T: int, rank: int, n: int) -> slice:
    """Positions of rank `rank` of `n` in a sequence of T tokens: the rank-th of n equal pieces."""
    if T % n:
        raise ValueError(f"context parallelism over {n} ranks needs a length divisible by {n}, got {T}")
    return slice(rank * (T // n), (rank + 1) * (T // n))


class _AllGather(torch.autograd.Function):
    """x [...] on each of the k ranks -> [k, ...] on every rank. Backward: rank i's gradient is the sum
    over the ranks of their gradient for slot i (a reduce-scatter; an all-reduce where the process group
    has no reduce-scatter, e.g. gloo: the summaries are small)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, group: dist.ProcessGroup) -> torch.Tensor:
        ctx.group = group
        x = x.contiguous()
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size(group))]
        dist.all_gather(parts, x, group=group)
        return torch.stack(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        group = ctx.group
        if dist.get_backend(group) == dist.Backend.NCCL:
            out = torch.empty_like(grad[0])
            dist.reduce_scatter(out, list(grad.contiguous().unbind(0)), group=group)
            return out, None
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, group=group)
        return grad[dist.get_rank(group)], None


def all_gather(x: torch.Tensor, group: dist.ProcessGroup) -> torch.Tensor:
    """Differentiable all-gather: [...] -> [k, ...] (slot i from rank i of the group)."""
    return _AllGather.apply(x, group)


def ssd(inner_ssd, group, x, dt, A, B, C, *, chunk_size=256, D=None, initial_state=None):
    """The SSD of this rank's piece of the group's sequence (op contract of `ops.ssd`).

    Args: x [b, t, h, p], dt [b, t, h] (Delta), A [h], B/C [b, t, g, n], D [h] or None,
        initial_state [b, h, p, n]: the state before the group's sequence, read on the group's rank 0 only.
    Returns: y [b, t, h, p] (this piece), final_state [b, h, p, n] fp32 (the whole sequence's, every rank).
    """
    rank, k = dist.get_rank(group), dist.get_world_size(group)
    b, t, h, p = x.shape
    g, n = B.shape[-2:]
    r = h // g
    y, h_loc = inner_ssd(x, dt, A, B, C, chunk_size=chunk_size, D=D, initial_state=initial_state if rank == 0 else None)
    with _no_autocast(x.device.type):
        # log alpha_{1:t} inside the piece, summed in fp64: it is the exponent for up to T/N tokens
        log_decay = torch.cumsum(dt.double() * A.double(), dim=1)  # [b, t, h]
        summary = torch.cat([h_loc.float().reshape(b, h, p * n), log_decay[:, -1, :, None].float()], dim=-1)
        gathered = all_gather(summary, group)  # [k, b, h, p*n + 1]
        h_locs = gathered[..., :-1].reshape(k, b, g, r, p, n).transpose(0, 1)  # [b, k, g, r, p, n]
        log_a = gathered[..., -1].reshape(k, b, g, r).transpose(0, 1)  # [b, k, g, r]
        entering, final = _pass_states(h_locs, log_a, None)  # h_in^i for every i, h_out^{k-1}
        h_in = entering[:, rank]  # [b, g, r, p, n]; rank 0: zeros, still through the all-gather
        decay = torch.exp(log_decay).float().view(b, t, g, r)
        y_in = torch.einsum("btgn,bgrpn->btgrp", C.float(), h_in) * decay[..., None]
        y = (y.float() + y_in.reshape(b, t, h, p)).to(y.dtype)
    return y, final.reshape(b, h, p, n)


def causal_conv1d(inner_conv, group, x, weight, bias, *, initial_state=None):
    """The causal conv of this rank's piece (op contract of `ops.conv.causal_conv1d`), the halo exchanged.

    Args: x [b, t, c] with t >= k-1, weight [c, k], bias [c] or None,
        initial_state [b, c, k-1]: the inputs before the group's sequence, read on the group's rank 0 only.
    Returns: y [b, t, c] (this piece), final_state [b, c, k-1] (the whole sequence's last k-1 inputs, every rank).
    """
    rank = dist.get_rank(group)
    b, t, c = x.shape
    km1 = weight.shape[-1] - 1
    if t < km1:
        raise ValueError(f"context parallelism: each rank's piece needs >= d_conv-1 = {km1} tokens, got {t}")
    tails = all_gather(x[:, t - km1 :].transpose(1, 2), group)  # [k, b, c, k-1]: each piece's last inputs
    if initial_state is None:
        h0 = x.new_zeros(b, c, km1)
    else:
        h0 = initial_state.to(x.dtype)
    halos = torch.cat([h0[None], tails[:-1]])  # [k, b, c, k-1]: what enters each piece
    y, _ = inner_conv(x, weight, bias, initial_state=halos[rank])
    return y, tails[-1]


class ContextParallelOps:
    """The op contract of `inner` (a backend module), split over `active_group()` when there is one."""

    def __init__(self, inner: ModuleType):
        self.inner = inner
        self.__name__ = f"context_parallel({inner.__name__})"

    def ssd(self, x, dt, A, B, C, *, chunk_size=256, D=None, initial_state=None):
        group = active_group()
        if group is None:
            return self.inner.ssd(x, dt, A, B, C, chunk_size=chunk_size, D=D, initial_state=initial_state)
        return ssd(self.inner.ssd, group, x, dt, A, B, C, chunk_size=chunk_size, D=D, initial_state=initial_state)

    def causal_conv1d(self, x, weight, bias, *, initial_state=None):
        group = active_group()
        if group is None:
            return self.inner.causal_conv1d(x, weight, bias, initial_state=initial_state)
        return causal_conv1d(self.inner.causal_conv1d, group, x, weight, bias, initial_state=initial_state)

    def gated_rmsnorm(self, y, z, weight, *, eps, group_size):
        return self.inner.gated_rmsnorm(y, z, weight, eps=eps, group_size=group_size)  # per token


def _no_autocast(device_type: str):
    """The correction is computed in fp32, as the scan's state: under bf16 autocast the einsum would round it."""
    if torch.amp.is_autocast_available(device_type):
        return torch.autocast(device_type, enabled=False)
    return contextlib.nullcontext()
