"""Chunked SSD vs. the naive per-step recurrence vs. mamba_ssm's ssd_minimal_discrete."""

import importlib

import pytest
import torch
from einops import repeat

from stuffed_mamba.ops import ssd, ssd_step
from stuffed_mamba.ops.naive import ssd_naive
from tests.helpers import rel_err
from tests.reference import load_ssd_minimal

ssd_mod = importlib.import_module("stuffed_mamba.ops.ssd")  # the module; the package re-exports the function


def make_inputs(b=2, T=100, h=4, p=8, g=2, n=16, requires_grad=False):
    g_ = torch.Generator().manual_seed(1)
    x = torch.randn(b, T, h, p, generator=g_)
    dt = torch.rand(b, T, h, generator=g_) * 0.5 + 0.01
    A = -(torch.rand(h, generator=g_) * 2 + 0.1)
    B = torch.randn(b, T, g, n, generator=g_)
    C = torch.randn(b, T, g, n, generator=g_)
    D = torch.randn(h, generator=g_)
    h0 = torch.randn(b, h, p, n, generator=g_)
    ts = [x, dt, A, B, C, D, h0]
    if requires_grad:
        ts = [t.requires_grad_() for t in ts]
    return ts


@pytest.mark.parametrize("T", [1, 63, 100, 257])
@pytest.mark.parametrize("chunk_size", [16, 256])
def test_chunked_matches_naive_with_initial_state(T, chunk_size):
    x, dt, A, B, C, D, h0 = make_inputs(T=T)
    y, hT = ssd(x, dt, A, B, C, chunk_size=chunk_size, D=D, initial_state=h0)
    y_ref, hT_ref = ssd_naive(x, dt, A, B, C, D=D, initial_state=h0)
    assert rel_err(y, y_ref) < 1e-5
    assert rel_err(hT, hT_ref) < 1e-5
    assert hT.dtype == torch.float32


def test_block_loop_path_matches_matrix_path(monkeypatch):
    """Many blocks switch the inter-block recurrence to a loop; same numbers."""
    x, dt, A, B, C, D, h0 = make_inputs(T=300)
    y1, h1 = ssd(x, dt, A, B, C, chunk_size=16, D=D, initial_state=h0)
    monkeypatch.setattr(ssd_mod, "_MAX_BLOCKS_MATRIX", 2)
    y2, h2 = ssd(x, dt, A, B, C, chunk_size=16, D=D, initial_state=h0)
    assert rel_err(y2, y1) < 1e-6 and rel_err(h2, h1) < 1e-6


def test_gradients_match_naive_including_initial_state():
    """Gradients wrt every input, with an upstream gradient on the final state too."""
    ins = make_inputs(T=77, requires_grad=True)
    ins_ref = [t.detach().clone().requires_grad_() for t in ins]
    g_ = torch.Generator().manual_seed(2)
    dy = torch.randn(2, 77, 4, 8, generator=g_)
    dh = torch.randn(2, 4, 8, 16, generator=g_)
    x, dt, A, B, C, D, h0 = ins
    y, hT = ssd(x, dt, A, B, C, chunk_size=32, D=D, initial_state=h0)
    ((y * dy).sum() + (hT * dh).sum()).backward()
    x, dt, A, B, C, D, h0 = ins_ref
    y, hT = ssd_naive(x, dt, A, B, C, D=D, initial_state=h0)
    ((y * dy).sum() + (hT * dh).sum()).backward()
    for name, a, b in zip(["x", "dt", "A", "B", "C", "D", "h0"], ins, ins_ref, strict=True):
        assert rel_err(a.grad, b.grad) < 1e-4, name


def test_matches_mamba_ssm_ssd_minimal_discrete():
    """The authors' minimal listing (per-head B/C, X pre-multiplied by Delta, whole blocks only)."""
    ref = load_ssd_minimal()
    b, T, h, p, g, n = 2, 96, 4, 8, 2, 16
    x, dt, A, B, C, _, h0 = make_inputs(b, T, h, p, g, n)
    y, hT = ssd(x, dt, A, B, C, chunk_size=64, initial_state=h0)  # 96 is not a multiple of our block
    Bh = repeat(B, "b l g n -> b l (g r) n", r=h // g)
    Ch = repeat(C, "b l g n -> b l (g r) n", r=h // g)
    y_ref, hT_ref = ref.ssd_minimal_discrete(
        x * dt[..., None], A * dt, Bh, Ch, block_len=32, initial_states=h0[:, None]
    )
    assert rel_err(y, y_ref) < 1e-5
    assert rel_err(hT, hT_ref) < 1e-5


def test_gradients_match_ssd_minimal_discrete():
    """Gradients wrt x, Delta, A, B, C and the initial state through both implementations."""
    ref = load_ssd_minimal()
    b, T, h, p, g, n = 2, 96, 4, 8, 2, 16
    ins = [t.requires_grad_() for t in (make_inputs(b, T, h, p, g, n)[i] for i in (0, 1, 2, 3, 4, 6))]
    ins_ref = [t.detach().clone().requires_grad_() for t in ins]
    dy = torch.randn(b, T, h, p, generator=torch.Generator().manual_seed(3))
    x, dt, A, B, C, h0 = ins
    y, hT = ssd(x, dt, A, B, C, chunk_size=64, initial_state=h0)
    ((y * dy).sum() + hT.square().sum()).backward()
    x, dt, A, B, C, h0 = ins_ref
    Bh = repeat(B, "b l g n -> b l (g r) n", r=h // g)
    Ch = repeat(C, "b l g n -> b l (g r) n", r=h // g)
    y, hT = ref.ssd_minimal_discrete(x * dt[..., None], A * dt, Bh, Ch, block_len=32, initial_states=h0[:, None])
    ((y * dy).sum() + hT.square().sum()).backward()
    for name, a, r in zip(["x", "dt", "A", "B", "C", "h0"], ins, ins_ref, strict=True):
        assert rel_err(a.grad, r.grad) < 1e-4, name


def test_step_equals_scan():
    x, dt, A, B, C, D, h0 = make_inputs(T=20)
    y, hT = ssd(x, dt, A, B, C, D=D, initial_state=h0)
    state, ys = h0, []
    for t in range(20):
        yt, state = ssd_step(x[:, t], dt[:, t], A, B[:, t], C[:, t], state, D=D)
        ys.append(yt)
    assert rel_err(torch.stack(ys, 1), y) < 1e-5
    assert rel_err(state, hT) < 1e-5


def long_memory_inputs(b, T, h=4, p=4, g=2, n=8):
    """Decay rates from 1e-3 to 1: some heads keep the initial state over thousands of tokens."""
    g_ = torch.Generator().manual_seed(4)
    x = torch.randn(b, T, h, p, generator=g_)
    dt = torch.rand(b, T, h, generator=g_) * 0.1 + 0.01
    A = -torch.logspace(-3, 0, h)
    B = torch.randn(b, T, g, n, generator=g_) / n**0.5
    C = torch.randn(b, T, g, n, generator=g_)
    D = torch.randn(h, generator=g_)
    h0 = torch.randn(b, h, p, n, generator=g_)
    return [x, dt, A, B, C, D, h0]


def ssd_minimal_any_length(x, dt, A, B, C, *, D, initial_state, block_len):
    """The authors' listing (one [c, c] matrix between blocks) at any T: padded with Delta = 0
    (alpha = 1, no insertion) to whole blocks, per-head B/C, plus the D skip."""
    ref = load_ssd_minimal()
    b, T, h, p = x.shape
    pad = lambda t: torch.nn.functional.pad(t, (0, 0) * (t.dim() - 2) + (0, (-T) % block_len))
    r = h // B.shape[2]
    Bh, Ch = (repeat(pad(t), "b l g n -> b l (g r) n", r=r) for t in (B, C))
    y, hT = ref.ssd_minimal_discrete(
        pad(x * dt[..., None]), pad(A * dt), Bh, Ch, block_len=block_len, initial_states=initial_state[:, None]
    )
    return y[:, :T] + x * D[:, None], hT


@pytest.mark.parametrize("T, blocks_per_level", [(4500, None), (8200, None), (1000, 4)])
def test_long_sequences_with_all_gradients(T, blocks_per_level, monkeypatch):
    """Beyond 64 blocks step 3 runs at several levels: 4500 tokens = 71 blocks of 64 (two levels),
    8200 = 129 blocks (three super-blocks); with 4 blocks per level, 1000 tokens = 63 blocks of 16
    (four levels, padding at each). Output, final state and the gradient of every input, the initial
    state's included, with an upstream gradient on the final state, against the authors' listing."""
    if blocks_per_level:
        monkeypatch.setattr(ssd_mod, "_MAX_BLOCKS_MATRIX", blocks_per_level)
    b, h, p, n = 2, 4, 4, 8
    ins = long_memory_inputs(b, T)
    g_ = torch.Generator().manual_seed(5)
    dy, dh = torch.randn(b, T, h, p, generator=g_), torch.randn(b, h, p, n, generator=g_)
    block = 16 if blocks_per_level else 64
    outs = []
    for fn, kw in ((ssd, {"chunk_size": block}), (ssd_minimal_any_length, {"block_len": block})):
        x, dt, A, B, C, D, h0 = leaves = [t.clone().requires_grad_() for t in ins]
        y, hT = fn(x, dt, A, B, C, D=D, initial_state=h0, **kw)
        ((y * dy).sum() + (hT * dh).sum()).backward()
        outs.append((y, hT, [t.grad for t in leaves]))
    (y, hT, grads), (y_ref, hT_ref, grads_ref) = outs
    assert rel_err(y, y_ref) < 1e-5
    assert rel_err(hT, hT_ref) < 1e-5
    for name, a, r in zip(["x", "dt", "A", "B", "C", "D", "h0"], grads, grads_ref, strict=True):
        assert rel_err(a, r) < 1e-4, name
    # the initial state still reaches the end of the sequence, so its gradient is a real test
    assert grads_ref[-1].abs().max() > 0.1 * dh.abs().max()


def test_long_sequence_matches_naive():
    """4500 tokens (two levels in step 3) against the per-step recurrence, with an initial state."""
    x, dt, A, B, C, D, h0 = long_memory_inputs(2, 4500)
    y, hT = ssd(x, dt, A, B, C, chunk_size=256, D=D, initial_state=h0)
    y_ref, hT_ref = ssd_naive(x, dt, A, B, C, D=D, initial_state=h0)
    assert rel_err(y, y_ref) < 1e-5
    assert rel_err(hT, hT_ref) < 1e-5
