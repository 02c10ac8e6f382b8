"""ModelState: the whole recurrent state of a Mamba-2 LM, carried explicitly between calls."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class WindowState:
    """Inputs of the last w-1 positions of one layer, kept only under the sliding-window intervention.

    x: [B, m, H, P], dt: [B, m, H] (effective Delta), B: [B, m, G, N], with m <= w-1.
    """

    x: torch.Tensor
    dt: torch.Tensor
    B: torch.Tensor

    def map(self, fn) -> WindowState:
        return WindowState(fn(self.x), fn(self.dt), fn(self.B))


@dataclass
class LayerState:
    """conv: [B, d_inner + 2*G*N, d_conv-1], the last inputs of the short convolution (oldest first).
    ssm:  [B, H, P, N] fp32, h_t of eq. 2 for every head.
    window: only under `Intervention(window=w)`."""

    conv: torch.Tensor
    ssm: torch.Tensor
    window: WindowState | None = None

    def map(self, fn) -> LayerState:
        return LayerState(fn(self.conv), fn(self.ssm), None if self.window is None else self.window.map(fn))


@dataclass
class ModelState:
    layers: list[LayerState] = field(default_factory=list)

    @classmethod
    def zeros(cls, config, batch_size: int, device=None, dtype=torch.float32) -> ModelState:
        """All-zero state (the state before the first token). conv in `dtype`, ssm always fp32."""
        c = config
        return cls(
            [
                LayerState(
                    conv=torch.zeros(batch_size, c.conv_dim, c.d_conv - 1, device=device, dtype=dtype),
                    ssm=torch.zeros(batch_size, c.nheads, c.headdim, c.d_state, device=device, dtype=torch.float32),
                )
                for _ in range(c.n_layer)
            ]
        )

    def map(self, fn) -> ModelState:
        return ModelState([layer.map(fn) for layer in self.layers])

    def tensors(self) -> list[torch.Tensor]:
        """Every tensor of the state in a fixed order: conv, ssm[, window x, dt, B] per layer."""
        out: list[torch.Tensor] = []
        self.map(lambda t: out.append(t) or t)
        return out

    def detach(self) -> ModelState:
        """Cut the graph (truncated BPTT): the values carry on, the gradient stops here."""
        return self.map(torch.Tensor.detach)

    def to(self, device=None, dtype: torch.dtype | None = None) -> ModelState:
        """Move to `device`; `dtype` applies to the conv states only: SSM states stay fp32 (they accumulate)."""
        return ModelState(
            [
                LayerState(
                    conv=layer.conv.to(device=device, dtype=dtype),
                    ssm=layer.ssm.to(device=device),
                    window=None if layer.window is None else layer.window.map(lambda t: t.to(device=device)),
                )
                for layer in self.layers
            ]
        )

    def select(self, index) -> ModelState:
        """Rows of the batch (e.g. `state.select(slice(0, 1))`)."""
        return self.map(lambda t: t[index])

    @property
    def batch_size(self) -> int:
        return self.layers[0].ssm.shape[0]
