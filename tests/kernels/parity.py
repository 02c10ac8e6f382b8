"""Shared harness of the backend parity tests: one forward + backward with an upstream gradient on
the logits and on the final state, from a given initial ModelState."""

from __future__ import annotations

import torch

from stuffed_mamba.model import Mamba2Config, Mamba2LM, ModelState
from tests.helpers import rel_err


def state_leaves(state: ModelState) -> list[torch.Tensor]:
    """[conv_0, ssm_0, conv_1, ssm_1, ...]"""
    return [t for layer in state.layers for t in (layer.conv, layer.ssm)]


def forward_backward(model: Mamba2LM, ids, state0: ModelState, d_logits, d_state):
    """Backward of <logits, d_logits> + <final state, d_state> from a fresh copy of state0.

    Returns (logits, final state leaves, {name: grad} for every parameter and "state{i}" for the
    initial state's leaves), all in fp32.
    """
    state = state0.map(lambda t: t.detach().clone().requires_grad_())
    model.zero_grad(set_to_none=True)
    out = model(ids, state=state)
    final = state_leaves(out.state)
    loss = (out.logits.float() * d_logits).sum()
    for t, d in zip(final, d_state, strict=True):
        loss = loss + (t.float() * d).sum()
    loss.backward()
    grads = {n: p.grad.float() for n, p in model.named_parameters()}
    grads.update({f"state{i}": t.grad.float() for i, t in enumerate(state_leaves(state))})
    return out.logits.float(), [t.float() for t in final], grads


def bf16_errors(config: Mamba2Config, device, T: int, batch: int) -> dict[str, dict[str, float]]:
    """Relative error against an fp32 torch-backend reference of each backend run in bf16 weights
    (as DeepSpeed's bf16 keeps them; SSM states stay fp32): {backend: {quantity: error}}."""
    ref = Mamba2LM(config, backend="torch").to(device)
    ids = torch.randint(0, config.vocab_size, (batch, T), device=device)
    state0 = ModelState.zeros(config, batch, device=device).map(lambda t: 0.5 * torch.randn_like(t))
    d_logits = torch.randn(batch, T, config.vocab_size_padded, device=device)
    d_state = [torch.randn_like(t) for t in state_leaves(state0)]
    l32, s32, g32 = forward_backward(ref, ids, state0, d_logits, d_state)

    errors = {}
    for name in ("torch", "mamba_ssm"):
        model = Mamba2LM(config, backend=name).to(device)
        model.load_state_dict(ref.state_dict())
        model.to(torch.bfloat16)
        logits, states, grads = forward_backward(model, ids, state0.to(dtype=torch.bfloat16), d_logits, d_state)
        e = {"logits": rel_err(logits, l32)}
        e.update({f"final state{i}": rel_err(a, b) for i, (a, b) in enumerate(zip(states, s32, strict=True))})
        e.update({f"grad {n}": rel_err(grads[n], g32[n]) for n in g32})
        errors[name] = e
    return errors


def assert_kernel_bf16_no_worse_than_torch(errors: dict[str, dict[str, float]]) -> None:
    """The kernels' bf16 error is at most twice the torch backend's own bf16 error, plus 1e-2."""
    e_torch, e_kern = errors["torch"], errors["mamba_ssm"]
    for key in e_torch:
        assert e_kern[key] <= 2 * e_torch[key] + 1e-2, f"{key}: kernel {e_kern[key]:.2e} vs torch {e_torch[key]:.2e}"
    assert e_kern["logits"] < 5e-2
