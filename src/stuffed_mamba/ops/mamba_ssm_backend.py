"""The "mamba_ssm" backend: mamba_ssm's Triton kernels, and causal-conv1d's CUDA conv when installed.

Same op contract as the "torch" backend (see `stuffed_mamba.ops`), so the model, TBPTT, chunked
prefill and the interventions (which the mixer applies to the op inputs Delta, x, B) run unchanged:

    ssd(x, dt, A, B, C, *, chunk_size, D=None, initial_state=None) -> (y, final_state)
        mamba_ssm's `mamba_chunk_scan_combined` (the fused SSD scan of Mamba-2).
    causal_conv1d(x, weight, bias, *, initial_state=None) -> (y, final_state)
        causal-conv1d's `causal_conv1d_fn` if importable, else the torch conv (logged once).
    gated_rmsnorm(y, z, weight, *, eps, group_size) -> out
        mamba_ssm's Triton `rmsnorm_fn` with norm_before_gate=False.

Kernel calls never overflow (state-spaces/mamba #1015): mamba-ssm 2.3.2.post1's Triton kernels form
element offsets in 32-bit integers, so no call is handed a tensor (input, view, output, internal
buffer or gradient, forward and backward) whose largest element offset reaches `MAX_KERNEL_OFFSET`.
A call that would is split exactly into smaller ones (`ops.kernel_split`): by rows, and along the
sequence into pieces chained through the states (SSD and conv); by rows for the gated norm.

Importing this module without working kernels raises ImportError naming the install command:
there is no silent fallback to the torch SSD. On a CPU the kernels run only under
`TRITON_INTERPRET=1` with the test-only shims of `tests/kernels/conftest.py`.
"""

from __future__ import annotations

import logging

import torch

# mamba-ssm and causal-conv1d compile against the installed torch: a plain `pip install` builds them
# in an isolated environment without torch and fails. The script installs in the working order.
_INSTALL = (
    "bash scripts/install.sh cuda (torch's CUDA build first, then causal-conv1d and mamba-ssm "
    "built against it with --no-build-isolation)"
)

try:
    from mamba_ssm.ops.triton.layernorm_gated import rmsnorm_fn
    from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined
    from mamba_ssm.utils.determinism import use_deterministic_mode
except Exception as e:  # not installed (ImportError) or built without its CUDA extensions
    reason = " ".join(str(e).split())  # one line, whatever the import error printed
    raise ImportError(
        f'backend "mamba_ssm" needs the mamba-ssm kernels, which failed to import '
        f"({type(e).__name__}: {reason}); install them with {_INSTALL}"
    ) from e

try:
    from causal_conv1d import causal_conv1d_fn
except ImportError:  # an optional package: the conv is cheap next to the SSD, the torch one is fine
    causal_conv1d_fn = None

from stuffed_mamba.ops import kernel_split
from stuffed_mamba.ops.conv import causal_conv1d as _torch_causal_conv1d
from stuffed_mamba.ops.kernel_offsets import INT32_MAX, ConvCall, NormCall, SSDCall

log = logging.getLogger(__name__)
_logged_conv_fallback = False

# Read at every call (tests lower it): every kernel offset stays below it.
MAX_KERNEL_OFFSET = INT32_MAX

__all__ = ["MAX_KERNEL_OFFSET", "ssd", "causal_conv1d", "gated_rmsnorm"]


def _pieces(call) -> list[kernel_split.Piece]:
    return kernel_split.plan(call.largest, call.rows, call.length, bound=MAX_KERNEL_OFFSET, align=call.align)


def ssd(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    *,
    chunk_size: int = 256,
    D: torch.Tensor | None = None,
    initial_state: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """h_t = exp(Delta_t A) h_{t-1} + Delta_t B_t x_t^T,  y_t = C_t h_t + D x_t, per head.

    Args:
        x: [b, T, h, p]
        dt: [b, T, h] Delta, already softplus'ed and biased (the mixer computes it and the
            interventions scale it), so the kernel runs with dt_softplus=False and no dt_bias
        A: [h] negative (= -exp(A_log))
        B, C: [b, T, g, n]
        D: [h] or None
        initial_state: [b, h, p, n] or None (zeros)
    Returns:
        y: [b, T, h, p] in x's dtype; final_state: [b, h, p, n] in fp32. In mamba-ssm 2.3.2.post1
        the state passing between chunks runs in fp32 and stores the final state in fp32
        (`_state_passing_fwd`) whatever the inputs' dtype, so a state carried across calls is
        not rounded to bf16; the per-chunk states kept for the output scan (the C_t h_{chunk start}
        term of y) are stored in C's dtype, bf16 under bf16. Under bf16 each chunk's contribution
        is still formed from bf16 operands (`_chunk_state_fwd` rounds exp(...)*Delta*B to x's dtype
        before its fp32-accumulated dot), so h_T carries errors of bf16's order from its inputs.
    """
    b, T, h, p = x.shape
    g, n = B.shape[2:]
    sm_count = torch.cuda.get_device_properties(x.device).multi_processor_count  # as mamba_ssm reads it
    call = SSDCall(
        *(b, T, h, p, g, n, chunk_size),
        x_strides=x.stride(),
        dt_strides=dt.stride(),
        B_strides=B.stride(),
        C_strides=C.stride(),
        has_D=D is not None,
        sm_count=sm_count,
        deterministic=use_deterministic_mode(),
    )
    seq = dict(x=x, dt=dt, B=B, C=C)
    return kernel_split.run_chained(_pieces(call), _ssd, seq, initial_state, A=A, D=D, chunk_size=chunk_size)


def _ssd(x, dt, B, C, *, A, D, chunk_size, initial_state):
    y, final_state = mamba_chunk_scan_combined(
        x,
        dt,
        A,
        B,
        C,
        chunk_size,
        D=D,
        initial_states=initial_state,
        dt_softplus=False,
        return_final_states=True,
    )
    return y, final_state.float()


def causal_conv1d(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    *,
    initial_state: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """y = SiLU(causal depthwise conv(x)), with state in and out.

    Args:
        x: [b, T, c] channels last, as in_proj produces them
        weight: [c, k]; bias: [c] or None
        initial_state: [b, c, k-1] the last k-1 inputs before this call, oldest first; None = zeros
    Returns:
        y: [b, T, c]; final_state: [b, c, k-1] (the last k-1 inputs, initial ones included if T < k-1)
    """
    if causal_conv1d_fn is None:
        global _logged_conv_fallback
        if not _logged_conv_fallback:
            log.warning(
                "causal-conv1d is not installed: the mamba_ssm backend runs the short convolution in "
                "PyTorch (slower on GPUs; bash scripts/install.sh cuda installs it)"
            )
            _logged_conv_fallback = True
        return _torch_causal_conv1d(x, weight, bias, initial_state=initial_state)
    b, T, c = x.shape
    call = ConvCall(b, T, c, weight.shape[-1], x.stride())
    return kernel_split.run_chained(_pieces(call), _conv, dict(x=x), initial_state, weight=weight, bias=bias)


def _conv(x, *, weight, bias, initial_state):
    b, T, c = x.shape
    k = weight.shape[-1]
    if initial_state is None:
        initial_state = x.new_zeros(b, c, k - 1)
    initial_state = initial_state.to(x.dtype)
    # causal-conv1d takes initial states only in the channel-last layout (stride 1 along c).
    xt = x.transpose(1, 2)  # [b, c, T], channel-last view of x
    if xt.stride(1) != 1:
        xt = x.contiguous().transpose(1, 2)
    h0 = initial_state.transpose(1, 2).contiguous().transpose(1, 2)  # [b, c, k-1], channel-last
    y = causal_conv1d_fn(xt, weight, bias, initial_states=h0, activation="silu")  # [b, c, T]
    # The final state is the last k-1 inputs: exact by definition. Slice x before joining, so the
    # copy is k-1 columns, not the whole input; the initial state still counts when T < k-1.
    final_state = torch.cat([initial_state, xt[:, :, -(k - 1) :]], dim=-1)[:, :, -(k - 1) :].contiguous()
    return y.transpose(1, 2), final_state


def gated_rmsnorm(
    y: torch.Tensor, z: torch.Tensor, weight: torch.Tensor, *, eps: float, group_size: int
) -> torch.Tensor:
    """RMSNorm_per_group(y * SiLU(z)) * weight (gate before the norm: norm_before_gate=False).

    y, z: [..., d_inner]; the RMS runs over each group of `group_size` channels.
    """
    shape = y.shape
    y2, z2 = y.reshape(-1, shape[-1]), z.reshape(-1, shape[-1])  # as rmsnorm_fn flattens them
    sm_count = torch.cuda.get_device_properties(y.device).multi_processor_count
    call = NormCall(y2.shape[0], shape[-1], group_size, y2.stride(), z2.stride(), sm_count)
    out = kernel_split.run_rows(_pieces(call), _norm, dict(y=y2, z=z2), weight=weight, eps=eps, group_size=group_size)
    return out.reshape(shape)


def _norm(y, z, *, weight, eps, group_size):
    return rmsnorm_fn(y, weight, None, z=z, eps=eps, group_size=group_size, norm_before_gate=False)
