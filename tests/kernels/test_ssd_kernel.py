"""mamba_ssm's `mamba_chunk_scan_combined`, as our "mamba_ssm" backend calls it, against references.

Runs on CPU under Triton's interpreter (fixture `mamba_kernels`): the exact Triton code the GPUs run.
"""

from __future__ import annotations

import pytest
import torch

from stuffed_mamba.ops.naive import ssd_naive
from tests.helpers import rel_err


def _inputs(b=2, T=40, h=4, p=8, g=2, n=16, dtype=torch.float32):
    """Random SSD inputs with realistic ranges: Delta in (0.01, 0.5), A in (-2, -0.2)."""
    x = torch.randn(b, T, h, p, dtype=dtype)
    dt = torch.rand(b, T, h, dtype=dtype) * 0.49 + 0.01
    A = -(torch.rand(h, dtype=dtype) * 1.8 + 0.2)
    B = torch.randn(b, T, g, n, dtype=dtype)
    C = torch.randn(b, T, g, n, dtype=dtype)
    D = torch.randn(h, dtype=dtype)
    h0 = torch.randn(b, h, p, n, dtype=dtype)
    return dict(x=x, dt=dt, A=A, B=B, C=C, D=D, initial_state=h0)


def test_forward_matches_naive_and_ssd_minimal(mamba_kernels):
    """T = 40 with chunk 16 (a partial last chunk), 2 groups of 2 heads, an initial state."""
    from mamba_ssm.modules.ssd_minimal import ssd_minimal_discrete

    inp = _inputs()
    y, hT = mamba_kernels.ssd(**{k: v for k, v in inp.items()}, chunk_size=16)
    assert y.shape == inp["x"].shape and y.dtype == torch.float32
    assert hT.shape == inp["initial_state"].shape and hT.dtype == torch.float32

    d = {k: v.double() for k, v in inp.items()}
    y_ref, hT_ref = ssd_naive(**d)
    assert rel_err(y, y_ref) < 1e-5
    assert rel_err(hT, hT_ref) < 1e-5

    # mamba_ssm's own listing (the Mamba-2 paper's): X = Delta x, A_t = Delta_t A, B/C per head,
    # blocks of 8 (it needs T to be a multiple of its block).
    r = 2
    y_min, hT_min = ssd_minimal_discrete(
        d["x"] * d["dt"][..., None],
        d["dt"] * d["A"],
        d["B"].repeat_interleave(r, dim=2),
        d["C"].repeat_interleave(r, dim=2),
        block_len=8,
        initial_states=d["initial_state"][:, None],
    )
    y_min = y_min + d["D"][:, None] * d["x"]
    assert rel_err(y, y_min) < 1e-5
    assert rel_err(hT, hT_min) < 1e-5


def test_gradients_match_naive(mamba_kernels):
    """d/d(x, Delta, A, B, C, D, h_0) of <y, dy> + <h_T, dh_T>: the backward kernels, state path too."""
    inp = _inputs(T=24)
    dy = torch.randn_like(inp["x"])
    dhT = torch.randn_like(inp["initial_state"])

    leaves = {k: v.clone().requires_grad_() for k, v in inp.items()}
    y, hT = mamba_kernels.ssd(**leaves, chunk_size=16)
    ((y * dy).sum() + (hT * dhT).sum()).backward()

    ref = {k: v.double().requires_grad_() for k, v in inp.items()}
    y_ref, hT_ref = ssd_naive(**ref)
    ((y_ref * dy.double()).sum() + (hT_ref * dhT.double()).sum()).backward()

    for name in ref:
        assert leaves[name].grad is not None, name
        err = rel_err(leaves[name].grad, ref[name].grad)
        assert err < 1e-4, f"d{name}: rel err {err:.2e}"


def test_without_initial_state_or_D_starts_from_zero(mamba_kernels):
    """initial_state=None means h_0 = 0 (a fresh sequence); D=None means no skip term."""
    inp = _inputs(b=1, T=20)
    y, hT = mamba_kernels.ssd(inp["x"], inp["dt"], inp["A"], inp["B"], inp["C"], chunk_size=16)
    d = {k: v.double() for k, v in inp.items() if k not in ("D", "initial_state")}
    y_ref, hT_ref = ssd_naive(**d)
    assert rel_err(y, y_ref) < 1e-5
    assert rel_err(hT, hT_ref) < 1e-5


def test_state_passed_between_calls_equals_one_call(mamba_kernels):
    """TBPTT / chunked prefill: two calls passing the fp32 final state give the one-call result."""
    inp = _inputs(b=1, T=30)
    y, hT = mamba_kernels.ssd(**inp, chunk_size=16)
    first = {k: (v[:, :13] if v.dim() >= 3 and k != "initial_state" else v) for k, v in inp.items()}
    second = {k: (v[:, 13:] if v.dim() >= 3 and k != "initial_state" else v) for k, v in inp.items()}
    y1, h1 = mamba_kernels.ssd(**first, chunk_size=16)
    second["initial_state"] = h1
    y2, h2 = mamba_kernels.ssd(**second, chunk_size=16)
    assert rel_err(torch.cat([y1, y2], dim=1), y) < 1e-5
    assert rel_err(h2, hT) < 1e-5


@pytest.mark.slow
@pytest.mark.extended("every other kernel test runs the configs the autotuner's shim picks")
def test_first_autotune_configs_too(mamba_kernels):
    """The tests run each kernel's smallest-block config; the first (largest-block) configs give the
    same forward and gradients. (The GPU's autotuner may pick either.)"""
    from tests.kernels.conftest import autotune_choice, chosen_configs

    inp = _inputs(b=1, T=24)
    dy = torch.randn_like(inp["x"])
    results, configs = {}, {}
    for choice in ("smallest", "first"):
        with autotune_choice(choice):
            leaves = {k: v.clone().requires_grad_() for k, v in inp.items()}
            y, hT = mamba_kernels.ssd(**leaves, chunk_size=16)
            ((y * dy).sum() + hT.sum()).backward()
            results[choice] = [y, hT] + [leaves[k].grad for k in inp]
            configs[choice] = chosen_configs()
    changed = [k for k in configs["first"] if configs["first"][k] != configs["smallest"].get(k)]
    print(f"\n{len(changed)} of {len(configs['first'])} autotuned kernels ran another config")
    assert len(changed) >= 5, configs  # the forward and backward kernels really ran other tiles
    for a, b in zip(results["first"], results["smallest"], strict=True):
        assert rel_err(a, b) < 1e-5


def test_bf16_inputs_give_an_fp32_final_state_unrounded(mamba_kernels):
    """mamba-ssm 2.3.2.post1 passes the state between chunks in fp32 and stores the final state in
    fp32 even for bf16 inputs (the backend's docstring): h_T is fp32 and off bf16's grid (it was not
    rounded at the end), and within bf16's rounding of its inputs of the fp64 scan."""
    from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined

    inp = {k: v.bfloat16() for k, v in _inputs(b=1, T=40).items()}
    inp["A"], inp["D"], inp["initial_state"] = inp["A"].float(), inp["D"].float(), inp["initial_state"].float()
    _, hT = mamba_chunk_scan_combined(
        inp["x"],
        inp["dt"],
        inp["A"],
        inp["B"],
        inp["C"],
        16,
        D=inp["D"],
        initial_states=inp["initial_state"],
        return_final_states=True,
    )
    assert hT.dtype == torch.float32
    on_bf16_grid = (hT == hT.bfloat16().float()).float().mean().item()
    assert on_bf16_grid < 0.1, on_bf16_grid
    _, hT_ref = ssd_naive(**{k: v.double() for k, v in inp.items()})
    assert rel_err(hT, hT_ref) < 2**-7  # the chunk states' bf16 operands, not a final rounding
