"""Acceptance 1 and 2 of issue 6: the full Mamba2LM on backend "mamba_ssm" equals backend "torch".

Same weights, a random initial ModelState passed in, T = 23 (not a multiple of chunk_size = 16):
logits, final state, and the gradient of every parameter and of the initial state within 1e-3
relative, in fp32. mamba_ssm's Triton kernels run on the CPU under Triton's interpreter (fixture
`mamba_kernels`); causal-conv1d needs CUDA, so the conv is the torch one here (see test_gpu.py).
"""

from __future__ import annotations

import pytest
import torch

from stuffed_mamba.model import Intervention, Mamba2Config, Mamba2LM, ModelState
from tests.helpers import rel_err, tiny_config
from tests.kernels.parity import assert_kernel_bf16_no_worse_than_torch, bf16_errors, forward_backward, state_leaves

TOL = 1e-3
T = 23


def _config(**kw) -> Mamba2Config:
    # 4 heads in 2 groups: the interpreter's cost grows with batch x heads x chunks
    return tiny_config(**{"vocab_size": 50, "ngroups": 2, **kw})


def _model_pair(config: Mamba2Config) -> tuple[Mamba2LM, Mamba2LM]:
    """Two models, one per backend, with identical weights (norm weights and D made non-trivial)."""
    ref = Mamba2LM(config, backend="torch")
    with torch.no_grad():
        for name, p in ref.named_parameters():
            if name.endswith("norm.weight") or name.endswith("norm_f.weight") or name.endswith(".D"):
                p.add_(0.3 * torch.randn_like(p))
    kern = Mamba2LM(config, backend="mamba_ssm")
    kern.load_state_dict(ref.state_dict())
    return ref, kern


def _random_state(config: Mamba2Config, batch: int) -> ModelState:
    s = ModelState.zeros(config, batch)
    return s.map(lambda t: (0.5 * torch.randn_like(t)).requires_grad_())


def _compare(ref_model, kern_model, ids, state0):
    """{quantity: relative error of kern_model against ref_model} over logits, final state leaves,
    every parameter's gradient ("grad <name>") and the initial state's ("grad state<i>")."""
    d_logits = torch.randn(*ids.shape, ref_model.config.vocab_size_padded)
    d_state = [torch.randn_like(t) for t in state_leaves(state0)]
    logits_r, final_r, grads_r = forward_backward(ref_model, ids, state0, d_logits, d_state)
    logits_k, final_k, grads_k = forward_backward(kern_model, ids, state0, d_logits, d_state)

    errors = {"logits": rel_err(logits_k, logits_r)}
    for i, (a, b) in enumerate(zip(final_k, final_r, strict=True)):
        errors[f"final {'conv' if i % 2 == 0 else 'ssm'} state {i // 2}"] = rel_err(a, b)
    for name in grads_r:
        errors[f"grad {name}"] = rel_err(grads_k[name], grads_r[name])
    return errors


def test_mamba_ssm_backend_matches_torch_logits_state_and_every_gradient(mamba_kernels):
    config = _config()
    ref, kern = _model_pair(config)
    ids = torch.randint(0, config.vocab_size, (2, T))
    state0 = _random_state(config, 2)
    errors = _compare(ref, kern, ids, state0)
    n_params = len(list(ref.named_parameters()))
    assert sum(k.startswith("grad backbone") or k.startswith("grad lm_head") for k in errors) == n_params
    assert sum(k.startswith("grad state") for k in errors) == 2 * config.n_layer
    worst = max(errors, key=errors.get)
    print(f"\n{len(errors)} comparisons, worst {worst}: {errors[worst]:.2e}, logits {errors['logits']:.2e}")
    assert errors[worst] < TOL, f"{worst}: rel err {errors[worst]:.2e}"


def test_parity_under_rri_and_longmamba_interventions(mamba_kernels):
    """alpha_scale, b_scale and dt_scale reach the kernel through its inputs (Delta, x, B)."""
    config = _config(n_layer=1)
    ref, kern = _model_pair(config)
    iv = Intervention(dt_scale=0.7, alpha_scale=0.9999, b_scale=0.75)
    ref.set_intervention(iv)
    kern.set_intervention(iv)
    ids = torch.randint(0, config.vocab_size, (1, T))
    errors = _compare(ref, kern, ids, _random_state(config, 1))
    worst = max(errors, key=errors.get)
    assert errors[worst] < TOL, f"{worst}: rel err {errors[worst]:.2e}"


def test_parity_under_window_intervention_in_pieces(mamba_kernels):
    """The sliding window (eq. 8) runs two extra scans per layer; its buffer crosses calls."""
    config = _config(n_layer=1)
    ref, kern = _model_pair(config)
    iv = Intervention(window=6)
    ref.set_intervention(iv)
    kern.set_intervention(iv)
    ids = torch.randint(0, config.vocab_size, (1, T))
    with torch.no_grad():
        whole = ref(ids, state=ModelState.zeros(config, 1)).logits
        out1 = kern(ids[:, :9], state=ModelState.zeros(config, 1))
        out2 = kern(ids[:, 9:], state=out1.state)
    assert rel_err(torch.cat([out1.logits, out2.logits], dim=1), whole) < TOL


def test_pieces_and_step_on_the_kernel_backend(mamba_kernels):
    """TBPTT / chunked prefill / decode on "mamba_ssm": uneven pieces and `step` give the whole-sequence result."""
    config = _config(n_layer=1)
    _, kern = _model_pair(config)
    ids = torch.randint(0, config.vocab_size, (1, T))
    state0 = _random_state(config, 1).detach()
    with torch.no_grad():
        whole = kern(ids, state=state0)
        state, pieces = state0, []
        for a, b in ((0, 5), (5, 19), (19, 21)):
            out = kern(ids[:, a:b], state=state)
            pieces.append(out.logits)
            state = out.state
        for t in range(21, T):
            logits, state = kern.step(ids[:, t], state)
            pieces.append(logits[:, None])
    assert rel_err(torch.cat(pieces, dim=1), whole.logits) < 1e-4
    for got, want in zip(state.layers, whole.state.layers, strict=True):
        assert got.ssm.dtype == want.ssm.dtype == torch.float32
        assert rel_err(got.ssm, want.ssm) < 1e-4 and rel_err(got.conv, want.conv) < 1e-6


def test_bf16_parity_on_the_interpreter(mamba_kernels):
    """bf16 weights: the kernels' error against fp32 is no worse than the torch backend's own.

    (The `gpu` test does the same on CUDA at larger sizes.)"""
    errors = bf16_errors(_config(n_layer=1), "cpu", T=20, batch=1)
    assert_kernel_bf16_no_worse_than_torch(errors)


@pytest.mark.parametrize(
    "backend",
    [
        "torch",
        pytest.param(
            "mamba_ssm",
            marks=pytest.mark.extended("checkpointing on the kernels runs in CI in test_bptt_kernels[True]"),
        ),
    ],
)
def test_gradient_checkpointing_gives_the_same_gradients(mamba_kernels, backend):
    """Acceptance 2: per-layer activation checkpointing, state in and out, changes no gradient."""
    config = _config(chunk_size=32)  # one chunk: checkpointing does not care, the interpreter does
    model = Mamba2LM(config, backend=backend).train()
    ids = torch.randint(0, config.vocab_size, (1, T))
    labels = torch.randint(0, config.vocab_size, (1, T))
    state0 = _random_state(config, 1).detach()
    d_state = [torch.randn_like(t) for t in state_leaves(state0)]

    results = {}
    for ckpt in (False, True):
        model.gradient_checkpointing = ckpt
        model.zero_grad(set_to_none=True)
        state = state0.map(lambda t: t.clone().requires_grad_())
        out = model(ids, state=state, labels=labels)
        loss = out.loss + sum((t * d).sum() for t, d in zip(state_leaves(out.state), d_state, strict=True))
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters()}
        grads.update({f"state{i}": t.grad for i, t in enumerate(state_leaves(state))})
        results[ckpt] = (out.loss.detach(), grads)

    assert rel_err(results[True][0], results[False][0]) < 1e-6
    for name, g in results[False][1].items():
        err = rel_err(results[True][1][name], g)
        assert err < 1e-5, f"{backend} {name}: rel err {err:.2e}"
