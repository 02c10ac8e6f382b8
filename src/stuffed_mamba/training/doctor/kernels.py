"""The doctor's `kernels` check: the recipe's backend imports, and on a tiny model gives the torch
backend's logits, final states and gradients on this device."""

from __future__ import annotations

import os

from stuffed_mamba.errors import first_line
from stuffed_mamba.training.doctor.context import TINY_MODEL, Context, Fail, Skip

# mamba_ssm's tl.dot uses TF32 for fp32 operands on tensor cores (docs/kernels.md)
TOLERANCE = 1e-2


def check_kernels(ctx: Context) -> str:
    ctx.need("recipe")
    backend = ctx.cfg.model.backend
    if backend == "torch":
        raise Skip("the recipe uses the torch backend")
    import torch

    from stuffed_mamba.ops import get_backend

    try:
        get_backend(backend)
    except ImportError as e:
        raise Fail(first_line(e)) from None
    if not ctx.cuda and os.environ.get("TRITON_INTERPRET") != "1":
        # The Triton kernels compile for a GPU; on a CPU only the interpreter runs them (the tests' way).
        raise Fail(
            f"{backend} kernels need a CUDA GPU: run the doctor on a GPU node (installed there with "
            "bash scripts/install.sh cuda), or use model.backend=torch on a CPU"
        )
    device = torch.device("cuda" if ctx.cuda else "cpu")
    worst, n = _compare_with_torch(backend, device)
    if not worst < TOLERANCE:
        raise Fail(f"{backend} differs from the torch backend on {device}: worst relative error {worst:.1e}")
    return f"{backend} = torch on {device}: logits, states, gradients; worst rel. error {worst:.1e} ({n} tensors)"


def _compare_with_torch(backend: str, device) -> tuple[float, int]:
    """(worst relative error, number of tensors compared) of `backend` against the torch backend:
    the logits, every final state tensor and every parameter's gradient of one forward and backward."""
    import torch

    from stuffed_mamba.model import Mamba2Config, Mamba2LM

    torch.manual_seed(0)
    ref = Mamba2LM(Mamba2Config(**TINY_MODEL, vocab_size=64), backend="torch").to(device)
    kern = Mamba2LM(Mamba2Config(**TINY_MODEL, vocab_size=64), backend=backend).to(device)
    kern.load_state_dict(ref.state_dict())
    ids = torch.randint(0, 64, (2, 37), device=device)  # not a multiple of the chunk
    outs = []
    for model in (ref, kern):
        out = model(ids)
        states = out.state.tensors()
        loss = out.logits.float().square().mean() + sum(s.float().square().mean() for s in states)
        loss.backward()
        grads = [p.grad.detach().float() for p in model.parameters()]
        outs.append([out.logits.detach().float(), *(s.detach().float() for s in states), *grads])
    worst = 0.0
    for a, b in zip(outs[1], outs[0], strict=True):
        worst = max(worst, ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item())
    return worst, len(outs[0])
