"""The "torch" backend: pure PyTorch, any device."""

from stuffed_mamba.ops.conv import causal_conv1d
from stuffed_mamba.ops.norm import gated_rmsnorm
from stuffed_mamba.ops.ssd import ssd

__all__ = ["ssd", "causal_conv1d", "gated_rmsnorm"]
