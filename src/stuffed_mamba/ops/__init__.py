"""Ops with one contract and several backends.

A backend is a module exposing

    ssd(x, dt, A, B, C, *, chunk_size, D=None, initial_state=None) -> (y, final_state)
    causal_conv1d(x, weight, bias, *, initial_state=None) -> (y, final_state)
    gated_rmsnorm(y, z, weight, *, eps, group_size) -> out

with explicit state in and out (shapes in `ops.ssd`, `ops.conv`, `ops.norm`). Backends are chosen by
name and never fall back silently: asking for "mamba_ssm" without its kernels is an error.
"""

from __future__ import annotations

import importlib

from stuffed_mamba.ops.conv import causal_conv1d, causal_conv1d_step
from stuffed_mamba.ops.norm import gated_rmsnorm, rms_norm
from stuffed_mamba.ops.ssd import ssd, ssd_step

BACKENDS = {
    "torch": "stuffed_mamba.ops.torch_backend",
    "mamba_ssm": "stuffed_mamba.ops.mamba_ssm_backend",
}


def get_backend(name: str):
    """The backend module called `name` ("torch" or "mamba_ssm"), wrapped for context parallelism after
    `ops.context_parallel.install()` (the wrapper splits only inside `context_parallel.split_over(group)`)."""
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; choose one of {sorted(BACKENDS)}")
    module = importlib.import_module(BACKENDS[name])
    from stuffed_mamba.ops import context_parallel

    return context_parallel.ContextParallelOps(module) if context_parallel.installed() else module


__all__ = [
    "BACKENDS",
    "get_backend",
    "ssd",
    "ssd_step",
    "causal_conv1d",
    "causal_conv1d_step",
    "gated_rmsnorm",
    "rms_norm",
]
