"""The "mamba_ssm" backend on a real GPU: CUDA Triton kernels, bf16, causal-conv1d. Skipped without CUDA.

These tests import the real kernels (no interpreter, no shims: the CPU tests' fixture is
module-scoped and not used here).
"""

from __future__ import annotations

import pytest
import torch

from stuffed_mamba.model import Mamba2Config, Mamba2LM, ModelState
from tests.helpers import rel_err
from tests.kernels.parity import assert_kernel_bf16_no_worse_than_torch, bf16_errors, forward_backward, state_leaves

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


@pytest.fixture(scope="module")
def backend():
    try:
        from stuffed_mamba.ops import get_backend

        return get_backend("mamba_ssm")
    except ImportError as e:
        pytest.skip(f"mamba-ssm kernels not installed: {e}")


def _config(**kw):
    base = dict(d_model=128, n_layer=2, vocab_size=1000, d_state=64, headdim=32, ngroups=1, chunk_size=64)
    return Mamba2Config(**{**base, **kw})


# mamba_ssm's kernels call tl.dot without an input precision: on NVIDIA tensor cores fp32 operands
# then run as TF32 (10-bit mantissa), as they do in training. The 1e-3 acceptance is shown on the CPU,
# where the interpreter multiplies in exact fp32 (test_model_parity.py); here TF32 sets the bar.
GPU_FP32_TOL = 1e-2


def test_fp32_parity_on_gpu(backend, monkeypatch):
    """Acceptance 1 on the real kernels: T = 300 over chunks of 64 (not a multiple)."""
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)  # the torch reference in true fp32
    config = _config()
    T, batch = 300, 2
    ref = Mamba2LM(config, backend="torch").cuda()
    kern = Mamba2LM(config, backend="mamba_ssm").cuda()
    kern.load_state_dict(ref.state_dict())
    ids = torch.randint(0, config.vocab_size, (batch, T), device="cuda")
    state0 = ModelState.zeros(config, batch, device="cuda").map(lambda t: 0.5 * torch.randn_like(t))
    d_logits = torch.randn(batch, T, config.vocab_size_padded, device="cuda")
    d_state = [torch.randn_like(t) for t in state_leaves(state0)]
    lr, sr, gr = forward_backward(ref, ids, state0, d_logits, d_state)
    lk, sk, gk = forward_backward(kern, ids, state0, d_logits, d_state)
    assert rel_err(lk, lr) < GPU_FP32_TOL
    for a, b in zip(sk, sr, strict=True):
        assert rel_err(a, b) < GPU_FP32_TOL
    for name in gr:
        assert rel_err(gk[name], gr[name]) < GPU_FP32_TOL, name


def test_bf16_parity(backend):
    """bf16 weights on CUDA: the kernels' error against fp32 is no worse than the torch backend's."""
    assert_kernel_bf16_no_worse_than_torch(bf16_errors(_config(), "cuda", T=300, batch=2))


@pytest.mark.parametrize("T", [2, 3, 300])
def test_causal_conv1d_kernel_path(backend, T):
    """causal-conv1d's CUDA kernel with initial states (channel-last) vs the torch conv, fwd + bwd."""
    if backend.causal_conv1d_fn is None:
        pytest.skip("causal-conv1d not installed")
    from stuffed_mamba.ops.conv import causal_conv1d as torch_conv

    b, c, k = 2, 96, 4
    wide = torch.randn(b, T, c + 40, device="cuda")  # x as a slice of in_proj's output
    x = wide[..., 8 : 8 + c]
    w = 0.5 * torch.randn(c, k, device="cuda")
    bias = torch.randn(c, device="cuda")
    h0 = torch.randn(b, c, k - 1, device="cuda")
    dy, dh = torch.randn(b, T, c, device="cuda"), torch.randn(b, c, k - 1, device="cuda")

    def run(fn):
        leaves = [t.detach().clone().requires_grad_() for t in (x, w, bias, h0)]
        y, hT = fn(leaves[0], leaves[1], leaves[2], initial_state=leaves[3])
        ((y * dy).sum() + (hT * dh).sum()).backward()
        return [y, hT] + [t.grad for t in leaves]

    for got, want, name in zip(
        run(backend.causal_conv1d), run(torch_conv), ["y", "hT", "dx", "dw", "db", "dh0"], strict=True
    ):
        assert rel_err(got, want) < 1e-4, name
