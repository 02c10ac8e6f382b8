"""Chunked state-space duality (SSD) scan in PyTorch, written like mamba_ssm's `ssd_minimal_discrete`.

Per head (paper eq. 2, 4 and 11), for t = 1..T:

    alpha_t = exp(Delta_t * A)                       memory retention, in (0, 1)
    h_t     = alpha_t * h_{t-1} + B_t (Delta_t x_t)   h_t: [N, P]  (B_bar_t x_t = Delta_t B_t x_t)
    y_t     = C_t h_t + D * x_t

The block decomposition splits T into blocks of Q tokens and computes
  1. the output of each block from inside the block (a masked "attention" with decay matrix L),
  2. the state each block leaves behind from its own tokens,
  3. the states passed between blocks (a recurrence over blocks, starting at the initial state),
  4. the output each block gets from the state entering it.

Step 3 is the same recurrence one level up (blocks instead of tokens). Up to `_MAX_BLOCKS_MATRIX`
blocks it is one [c+1, c+1] decay matrix, as in the paper's listing; beyond, the blocks are grouped
into super-blocks of that many blocks and the recurrence is applied again to the super-blocks
(`_pass_states` calls itself), so time and memory stay linear in T and there is no loop per block.

Letters in einsum strings: b batch, c block, l/s positions in a block (query / key), g group,
r heads per group (h = g*r), p head dim (P), n state dim (N).
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

# The torch backend's own block length. `chunk_size` is the Triton kernels' tile; the result does not
# depend on the block length, and on CPU a 64-token block is ~3x faster than 256 (measured: SSD
# forward+backward per layer 62 ms at 64 vs 200 ms at 256), since the quadratic part shrinks with Q.
TORCH_BLOCK_LEN = 64

# Blocks per level of the inter-block recurrence (step 3): one [S+1, S+1] decay matrix per group of
# S blocks. A single matrix over all c blocks would grow quadratically with T.
_MAX_BLOCKS_MATRIX = 64


def segsum_exp(a: torch.Tensor) -> torch.Tensor:
    """L[..., i, j] = exp(a_{j+1} + ... + a_i) for j <= i, else 0.   a: [..., Q] -> [..., Q, Q].

    Cumulative-sum differences inside a block are exact enough at Q <= 256 in fp32 and cost one
    subtraction, unlike transformers' masked cumsum over a [Q, Q] copy.
    """
    q = a.shape[-1]
    cs = torch.cumsum(a, dim=-1)
    diff = cs[..., :, None] - cs[..., None, :]
    causal = torch.ones(q, q, dtype=torch.bool, device=a.device).tril()
    return torch.exp(diff.masked_fill(~causal, float("-inf")))


def _fp32_under_autocast(fn):
    """The scan computes in fp32 whatever autocast says: under bf16 autocast (bf16-mixed) its einsums
    and matmuls would run in bf16 and round the state at every block."""

    @functools.wraps(fn)
    def wrapper(x, *args, **kwargs):
        device = x.device.type
        if not (torch.amp.is_autocast_available(device) and torch.is_autocast_enabled(device)):
            return fn(x, *args, **kwargs)
        with torch.autocast(device, enabled=False):
            return fn(x, *args, **kwargs)

    return wrapper


@_fp32_under_autocast
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
    """The SSD scan (op contract shared by every backend).

    Args:
        x:  [b, T, h, p]   inputs of each head
        dt: [b, T, h]      Delta, already softplus'ed and biased (> 0)
        A:  [h]            negative decay rate (= -exp(A_log))
        B:  [b, T, g, n]   input projection, shared by the h/g heads of a group
        C:  [b, T, g, n]   output projection
        chunk_size: the kernels' tile; the torch path uses min(chunk_size, TORCH_BLOCK_LEN)
        D:  [h] or None    skip connection
        initial_state: [b, h, p, n] (fp32) or None for zeros
    Returns:
        y: [b, T, h, p] in x's dtype, final_state: [b, h, p, n] in fp32.
    """
    b, T, h, p = x.shape
    g, n = B.shape[-2:]
    r = h // g
    Q = max(1, min(chunk_size, TORCH_BLOCK_LEN))
    out_dtype = x.dtype

    xf, dtf = x.float(), dt.float()
    Bf, Cf = B.float(), C.float()
    X = xf * dtf[..., None]  # B_bar x = Delta x (the Delta of eq. 3 folded into x)
    a = dtf * A.float()  # log alpha_t = Delta_t * A: [b, T, h]

    # Pad to whole blocks with Delta = 0: alpha = 1 and no insertion, so the final state is unchanged.
    pad = (-T) % Q
    if pad:
        X = F.pad(X, (0, 0, 0, 0, 0, pad))
        a = F.pad(a, (0, 0, 0, pad))
        Bf = F.pad(Bf, (0, 0, 0, 0, 0, pad))
        Cf = F.pad(Cf, (0, 0, 0, 0, 0, pad))
    c = (T + pad) // Q

    X = X.view(b, c, Q, g, r, p)
    Bc = Bf.view(b, c, Q, g, n)
    Cc = Cf.view(b, c, Q, g, n)
    a = a.view(b, c, Q, g, r).permute(0, 1, 3, 4, 2)  # (b, c, g, r, Q)
    a_cs = torch.cumsum(a, dim=-1)  # log alpha_{1:l} within each block

    # 1. Diagonal blocks: Y_diag[l] = sum_{s<=l} (C_l . B_s) alpha_{s+1:l} X_s
    CB = torch.einsum("bclgn,bcsgn->bcgls", Cc, Bc)  # once per group, not per head
    L = segsum_exp(a)  # (b, c, g, r, l, s)
    M = CB[:, :, :, None] * L
    Xh = X.permute(0, 1, 3, 4, 2, 5)  # (b, c, g, r, s, p)
    Y = M @ Xh  # (b, c, g, r, l, p)

    # 2. State each block leaves from its own tokens: sum_s alpha_{s+1:Q} B_s X_s^T
    decay_to_end = torch.exp(a_cs[..., -1:] - a_cs)  # (b, c, g, r, s)
    Xd = (Xh * decay_to_end[..., None]).transpose(-1, -2).reshape(b, c, g, r * p, Q)  # (b, c, g, r*p, s)
    states = (Xd @ Bc.permute(0, 1, 3, 2, 4)).view(b, c, g, r, p, n)  # (b, c, g, r, p, n)

    # 3. States between blocks: H_k = alpha_{block k} H_{k-1} + states_k, H_0 = initial state
    if initial_state is None:
        h0 = x.new_zeros(b, g, r, p, n, dtype=torch.float32)
    else:
        h0 = initial_state.float().reshape(b, g, r, p, n)
    block_decay = a_cs[..., -1]  # (b, c, g, r): log alpha over each whole block
    entering, final = _pass_states(states, block_decay, h0)

    # 4. Output from the state entering each block: C_l alpha_{1:l} H_{k-1}
    Ch = Cc.permute(0, 1, 3, 2, 4)  # (b, c, g, l, n)
    Y_off = torch.einsum("bcgln,bcgrpn->bcgrlp", Ch, entering) * torch.exp(a_cs)[..., None]
    Y = (Y + Y_off).permute(0, 1, 4, 2, 3, 5).reshape(b, c * Q, h, p)[:, :T]

    if D is not None:
        Y = Y + xf * D.float()[:, None]
    return Y.to(out_dtype), final.reshape(b, h, p, n)


def _pass_states(
    states: torch.Tensor, log_decay: torch.Tensor, h0: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """H_k = alpha_k H_{k-1} + states_k for k = 1..c, H_0 = h0 (step 3, linear in c).

    Args:
        states:    [b, c, g, r, p, n]  state each block leaves from its own tokens
        log_decay: [b, c, g, r]        log alpha_k over each whole block
        h0:        [b, g, r, p, n]     state entering the first block, None for zeros
    Returns:
        entering: [b, c, g, r, p, n] (H_0 .. H_{c-1}), final: [b, g, r, p, n] (H_c).
    """
    b, c, g, r, p, n = states.shape
    S = _MAX_BLOCKS_MATRIX
    if c <= S:
        # H_z = alpha_{1:z} h0 + sum_{1<=k<=z} alpha_{k+1:z} states_k: one decay matrix over the blocks
        decay_chunk = segsum_exp(F.pad(log_decay.permute(0, 2, 3, 1), (1, 0)))  # (b, g, r, z, k), z, k = 0..c
        new_states = torch.einsum("bgrzk,bkgrpn->bzgrpn", decay_chunk[..., 1:], states)  # (b, c+1, g, r, p, n)
        if h0 is not None:
            new_states = new_states + torch.einsum("bgrz,bgrpn->bzgrpn", decay_chunk[..., 0], h0)
        return new_states[:, :-1], new_states[:, -1]

    # Super-blocks of S blocks; padding blocks have alpha = 1 and no insertion (the final state is kept).
    pad = (-c) % S
    if pad:
        states = F.pad(states, (0, 0, 0, 0, 0, 0, 0, 0, 0, pad))
        log_decay = F.pad(log_decay, (0, 0, 0, 0, 0, pad))
    K = (c + pad) // S
    decay_s = log_decay.reshape(b, K, S, g, r)
    # 3a. Inside each super-block from a zero state: H^0_j, and the state each super-block leaves.
    local, leaving = _pass_states(states.reshape(b * K, S, g, r, p, n), log_decay.reshape(b * K, S, g, r), None)
    # 3b. Between super-blocks: the same recurrence, alpha over each whole super-block.
    entering_super, final = _pass_states(leaving.reshape(b, K, g, r, p, n), decay_s.sum(2), h0)  # (b, K, g, r, p, n)
    # 3c. H_j = H^0_j + alpha_{1:j} H_(entering the super-block), alpha_{1:j} over its blocks before j.
    decay_in = torch.exp(torch.cumsum(decay_s, dim=2) - decay_s)  # (b, K, S, g, r)
    entering = local.reshape(b, K, S, g, r, p, n) + decay_in[..., None, None] * entering_super[:, :, None]
    return entering.reshape(b, K * S, g, r, p, n)[:, :c], final


@_fp32_under_autocast
def ssd_step(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    state: torch.Tensor,
    D: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One recurrent step (the decode path). x [b, h, p], dt [b, h], B/C [b, g, n], state [b, h, p, n]."""
    h, g = x.shape[1], B.shape[1]
    xf, dtf = x.float(), dt.float()
    Bh = B.float().repeat_interleave(h // g, dim=1)  # [b, h, n]
    Ch = C.float().repeat_interleave(h // g, dim=1)
    alpha = torch.exp(dtf * A.float())  # [b, h]
    state = alpha[..., None, None] * state + (dtf[..., None] * xf)[..., None] * Bh[:, :, None, :]
    y = torch.einsum("bhpn,bhn->bhp", state, Ch)
    if D is not None:
        y = y + xf * D.float()[:, None]
    return y.to(x.dtype), state
