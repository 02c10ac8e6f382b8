"""The largest element offset each mamba_ssm kernel call computes, from shapes and strides alone.

mamba-ssm 2.3.2.post1's Triton kernels form pointer offsets in 32-bit integers (`pid_b * stride_batch
+ pid_c * chunk_size * stride_seqlen + ...`; state-spaces/mamba #1015): an offset of 2^31 or more
wraps, and the kernel reads or writes the wrong element without a word. The largest offset a kernel
forms into a strided tensor is sum_d (size_d - 1) * stride_d (Triton is handed `data_ptr()`, which
already includes the storage offset). This module lists, for one call of each op on `r` rows and `L`
tokens, every tensor the kernels of its forward and backward are handed, as mamba-ssm 2.3.2.post1
allocates them (`_mamba_chunk_scan_combined_fwd/_bwd`, `layernorm_gated._layer_norm_fwd/_bwd`), and
the views the caller passes with their own strides (z is a view of the in_proj output: row stride
d_in_proj). `tests/kernels/test_kernel_offsets.py` checks these lists against the tensors mamba_ssm's
own host code hands its kernels, recorded on meta tensors at full size.

Gradients of an op's outputs are modelled as slices of a contiguous tensor of the unsplit output's
shape (what autograd hands back through `torch.cat` when the backend splits a call).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

INT32_MAX = 2**31 - 1
H100_SMS = 132  # the doctor's and the recipe tests' GPU (mamba_ssm sizes some backward buffers by SMs)

Strides = tuple[int, ...]


def largest_offset(shape: Sequence[int], strides: Sequence[int]) -> int:
    """sum_d (size_d - 1) * stride_d; -1 for an empty tensor (no element is addressed)."""
    if any(s == 0 for s in shape):
        return -1
    return sum((s - 1) * st for s, st in zip(shape, strides, strict=True))


def contiguous(shape: Sequence[int]) -> Strides:
    strides, acc = [], 1
    for s in reversed(shape):
        strides.append(acc)
        acc *= s
    return tuple(reversed(strides))


def _dense(*shape: int) -> int:
    return largest_offset(shape, contiguous(shape))


@dataclass(frozen=True)
class SSDCall:
    """One `mamba_chunk_scan_combined` call as the backend makes it (dt_softplus=False, z=None).

    x: [b, T, h, p], dt: [b, T, h], B and C: [b, T, g, n], each with the caller's strides;
    `rows`, `length` = b, T of the whole (unsplit) call: its output gradient's layout.
    """

    rows: int
    length: int
    nheads: int
    headdim: int
    ngroups: int
    dstate: int
    chunk_size: int
    x_strides: Strides
    dt_strides: Strides
    B_strides: Strides
    C_strides: Strides
    has_D: bool = False
    sm_count: int = H100_SMS
    deterministic: bool = False

    @property
    def align(self) -> int:  # sequence pieces start at chunk boundaries
        return self.chunk_size

    def largest(self, r: int, L: int) -> int:
        """The largest offset over every kernel tensor, forward and backward, of the call on rows
        [0, r) and tokens [0, L) (views keep the caller's strides)."""
        h, p, g, n, cs = self.nheads, self.headdim, self.ngroups, self.dstate, self.chunk_size
        nc = math.ceil(L / cs)
        # mamba_ssm copies a view only if its last stride is not 1 (x: if neither M nor K is contiguous)
        x = self.x_strides if 1 in (self.x_strides[-1], self.x_strides[1]) else contiguous((r, L, h, p))
        B = self.B_strides if self.B_strides[-1] == 1 else contiguous((r, L, g, n))
        C = self.C_strides if self.C_strides[-1] == 1 else contiguous((r, L, g, n))
        ratio = h // g
        # _chunk_state_bwd_db, _chunk_scan_bwd_dC/_dcb: heads split over programs by the SM count
        per_program = max(min(math.ceil(r * nc * h / self.sm_count), ratio), 1)
        nsplits = math.ceil(ratio / per_program)
        tiles = (lambda d: math.ceil(d / 16)) if self.deterministic else (lambda d: 1)
        dout = contiguous((self.rows, self.length, h, p))
        return max(
            largest_offset((r, L, h, p), x),
            largest_offset((r, L, h), self.dt_strides),
            largest_offset((r, L, g, n), B),
            largest_offset((r, L, g, n), C),
            largest_offset((r, L, h, p), dout),  # dout: a slice of the whole call's gradient
            _dense(r, L, h, p),  # out, dx
            _dense(r, L, h),  # dt (clone), ddt
            _dense(r, h, nc, cs),  # dA_cumsum, dt_out, ddA_cumsum_prev
            _dense(r, nc, h, p, n),  # chunk states, passed states, dstates
            _dense(r, h, p, n),  # initial and final states, their gradients
            _dense(r, nc, g, cs, cs),  # CB, dCB
            _dense(r, L, nsplits, g, n),  # dB, dC partials per head split
            _dense(r, nc, nsplits, g, cs, cs),  # dcb partials
            _dense(r, h, nc, math.ceil(cs / 32), cs),  # _chunk_scan_bwd_ddAcs_stable
            _dense(r, h, nc, math.ceil(p * n / 64)),  # _state_passing_bwd's ddA_chunk_cumsum
            _dense(r, h, nc, cs, tiles(max(n, p))),  # deterministic tile workspaces
            _dense(math.ceil(cs / 32), r, nc, h, tiles(p)) if self.has_D else -1,  # dD partials
        )


@dataclass(frozen=True)
class NormCall:
    """One gated `rmsnorm_fn` call on y, z flattened to [M, N] rows (their strides as flattened)."""

    rows: int  # M of the whole call
    width: int  # N = d_inner
    group_size: int
    y_strides: Strides
    z_strides: Strides
    sm_count: int = H100_SMS
    length = align = 1  # rows only: the norm has no state to chain

    def largest(self, r: int, L: int = 1) -> int:
        N, G = self.width, self.width // self.group_size
        y = self.y_strides if self.y_strides[-1] == 1 else contiguous((r, N))
        z = self.z_strides if self.z_strides[-1] == 1 else contiguous((r, N))
        # _layer_norm_bwd's partial dw: one row per program, ceil(sm_count * ceil(4 / num_warps) / G)
        num_warps = min(max(2 ** math.ceil(math.log2(self.group_size)) // 256, 1), 8)
        programs = math.ceil(self.sm_count * math.ceil(4 / num_warps) / G)
        return max(
            largest_offset((r, N), y),
            largest_offset((r, N), z),
            _dense(r, N),  # out, dy (a slice of the whole call's gradient: row stride N), dx, dz
            _dense(G * r),  # rstd
            _dense(programs, N),  # dw partials
        )


@dataclass(frozen=True)
class ConvCall:
    """One causal-conv1d call: x [b, T, c] with the caller's strides (a view of in_proj's output),
    passed to the CUDA kernel channel-last; its 32-bit indexing is held to the same bound."""

    rows: int
    length: int
    channels: int
    width: int  # k
    x_strides: Strides
    align = 1

    def largest(self, r: int, L: int) -> int:
        c, k = self.channels, self.width
        x = self.x_strides if self.x_strides[-1] == 1 else contiguous((r, L, c))
        return max(
            largest_offset((r, L, c), x),
            largest_offset((r, L, c), contiguous((self.rows, self.length, c))),  # dout slice
            _dense(r, L, c),  # out, dx
            _dense(r, c, k - 1),  # initial state and its gradient
        )


def mixer_calls(
    config, batch: int, length: int, *, sm_count: int = H100_SMS
) -> dict[str, SSDCall | NormCall | ConvCall]:
    """The calls one Mamba-2 mixer makes on `batch` rows of `length` tokens, with the layouts it
    passes (model/mixer.py): z, xBC and dt are views of the in_proj output [b, T, d_in_proj]; the
    conv's output [b, T, conv_dim] is dense (torch's conv, or causal-conv1d's `empty_like` of its
    channel-last input), and x, B, C are views of it; Delta and y are dense."""
    c = config
    T, dip, cd = length, c.d_in_proj, c.conv_dim
    return {
        "ssd": SSDCall(
            batch,
            T,
            c.nheads,
            c.headdim,
            c.ngroups,
            c.d_state,
            c.chunk_size,
            x_strides=(T * cd, cd, c.headdim, 1),
            dt_strides=contiguous((batch, T, c.nheads)),
            B_strides=(T * cd, cd, c.d_state, 1),
            C_strides=(T * cd, cd, c.d_state, 1),
            sm_count=sm_count,
        ),
        "gated_rmsnorm": NormCall(
            batch * T,
            c.d_inner,
            c.d_inner // c.ngroups,
            y_strides=(c.d_inner, 1),
            z_strides=(dip, 1),
            sm_count=sm_count,
        ),
        "causal_conv1d": ConvCall(batch, T, cd, c.d_conv, x_strides=(T * dip, dip, 1)),
    }
