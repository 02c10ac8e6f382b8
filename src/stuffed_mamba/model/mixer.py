"""The Mamba-2 mixer (mamba_ssm's `Mamba2` layer without its varlen / tensor-parallel branches).

u -> in_proj -> [z, xBC, dt] -> causal conv1d + SiLU over xBC -> [x, B, C]
  -> SSD with Delta = softplus(dt + dt_bias), A = -exp(A_log), skip D -> gated RMSNorm(y, z) -> out_proj
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from stuffed_mamba.model.config import Mamba2Config
from stuffed_mamba.model.intervention import Intervention
from stuffed_mamba.model.state import LayerState, WindowState
from stuffed_mamba.ops import causal_conv1d_step, get_backend, ssd_step


class GatedRMSNorm(nn.Module):
    """Holds the gated norm's weight under mamba_ssm's state-dict key (`mixer.norm.weight`) and its
    settings; it has no forward: the mixer applies the op backend's gated RMSNorm with them."""

    def __init__(self, d: int, eps: float, group_size: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))
        self.eps, self.group_size = eps, group_size


class Mamba2Mixer(nn.Module):
    def __init__(self, config: Mamba2Config, backend: str = "torch"):
        super().__init__()
        c = self.config = config
        self.ops = get_backend(backend)
        self.in_proj = nn.Linear(c.d_model, c.d_in_proj, bias=False)
        # an nn.Conv1d only for its weight and bias under mamba_ssm's keys (`mixer.conv1d.*`) and its
        # init; it is never called: the op backend's causal conv1d with explicit state runs instead
        self.conv1d = nn.Conv1d(c.conv_dim, c.conv_dim, c.d_conv, groups=c.conv_dim, padding=c.d_conv - 1, bias=True)
        self.dt_bias = nn.Parameter(torch.empty(c.nheads))
        self.A_log = nn.Parameter(torch.empty(c.nheads))
        self.D = nn.Parameter(torch.ones(c.nheads))
        self.norm = GatedRMSNorm(c.d_inner, eps=c.rms_norm_eps, group_size=c.d_inner // c.ngroups)
        self.out_proj = nn.Linear(c.d_inner, c.d_model, bias=False)
        self.intervention: Intervention | None = None
        for p in (self.dt_bias, self.A_log, self.D):
            p._no_weight_decay = True
        self.reset_ssm_parameters()

    @torch.no_grad()
    def reset_ssm_parameters(self, generator: torch.Generator | None = None):
        """mamba_ssm's init: Delta ~ log-uniform [dt_min, dt_max], dt_bias = softplus^-1(Delta); A ~ U(A_init_range)."""
        c = self.config
        u = torch.rand(c.nheads, generator=generator)
        dt = torch.exp(u * (math.log(c.dt_max) - math.log(c.dt_min)) + math.log(c.dt_min)).clamp(min=c.dt_init_floor)
        self.dt_bias.copy_(dt + torch.log(-torch.expm1(-dt)))
        lo, hi = c.A_init_range
        self.A_log.copy_(torch.log(torch.empty(c.nheads).uniform_(lo, hi, generator=generator)))
        self.D.fill_(1.0)

    # ------------------------------------------------------------------------------------------
    def _split_proj(self, zxbcdt: torch.Tensor):
        c = self.config
        return torch.split(zxbcdt, [c.d_inner, c.conv_dim, c.nheads], dim=-1)

    def _split_xbc(self, xBC: torch.Tensor):
        c = self.config
        x, B, C = torch.split(xBC, [c.d_inner, c.ngroups * c.d_state, c.ngroups * c.d_state], dim=-1)
        *lead, _ = x.shape
        return (
            x.reshape(*lead, c.nheads, c.headdim),  # [..., H, P]
            B.reshape(*lead, c.ngroups, c.d_state),  # [..., G, N]
            C.reshape(*lead, c.ngroups, c.d_state),
        )

    def _discretise(self, dt_raw, x, B):
        """Delta, x and B after the interventions that act on the inputs of the scan (see intervention.py)."""
        A = -torch.exp(self.A_log.float())  # [H]
        Delta = F.softplus(dt_raw.float() + self.dt_bias.float())  # eq. 5
        iv = self.intervention
        x_in = x
        if iv is not None:
            if iv.dt_scale != 1:
                Delta = Delta * iv.dt_scale
            if iv.b_scale != 1:
                B = B * iv.b_scale
            if iv.alpha_scale != 1:
                # alpha' = s * alpha = exp(A * (Delta + log(s)/A)); rescale x so that Delta' x' = Delta x
                Delta_eff = Delta + math.log(iv.alpha_scale) / A
                x_in = (x.float() * (Delta / Delta_eff)[..., None]).to(x.dtype)
                Delta = Delta_eff
        return x_in, Delta, A, B

    def _scan_inputs(self, u: torch.Tensor, conv_state: torch.Tensor | None):
        """in_proj -> conv (+ state) -> split -> discretise: what the scan of this layer consumes."""
        z, xBC, dt_raw = self._split_proj(self.in_proj(u))
        xBC, conv_state = self.ops.causal_conv1d(
            xBC, self.conv1d.weight[:, 0], self.conv1d.bias, initial_state=conv_state
        )
        x, B, C = self._split_xbc(xBC)
        x_in, Delta, A, B = self._discretise(dt_raw, x, B)
        return x, x_in, Delta, A, B, C, z, conv_state

    def _output(self, y: torch.Tensor, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """Skip term D x on the un-rescaled x, gated RMSNorm with z, out_proj. y, x: [..., H, P]."""
        # D in fp32, as mamba_ssm's kernels compute the skip: under bf16 autocast x is bf16, and
        # casting D to it would round the parameter itself (D, A_log, dt_bias stay fp32).
        y = (y.float() + x.float() * self.D.float()[:, None]).to(y.dtype)
        y = self.ops.gated_rmsnorm(
            y.reshape(*y.shape[:-2], self.config.d_inner),
            z,
            self.norm.weight,
            eps=self.norm.eps,
            group_size=self.norm.group_size,
        )
        return self.out_proj(y)

    def ssm_inputs(self, u: torch.Tensor, conv_state: torch.Tensor | None = None) -> dict:
        """The inputs of the scan for hidden input u [B, T, d_model] (for probes).

        Returns x [B,T,H,P], Delta [B,T,H] (fp32, after interventions), A [H], log_alpha [B,T,H]
        (= Delta*A, the per-step log retention), B, C [B,T,G,N], z [B,T,d_inner], conv_state.
        """
        x, _, Delta, A, B, C, z, conv_state = self._scan_inputs(u, conv_state)
        return dict(x=x, Delta=Delta, A=A, log_alpha=Delta * A, B=B, C=C, z=z, conv_state=conv_state)

    # ------------------------------------------------------------------------------------------
    def forward(self, u: torch.Tensor, state: LayerState | None = None) -> tuple[torch.Tensor, LayerState]:
        """u: [B, T, d_model] -> (out [B, T, d_model], the layer's state after position T)."""
        x, x_in, Delta, A, B, C, z, conv_state = self._scan_inputs(u, None if state is None else state.conv)
        y, ssm_state = self.ops.ssd(
            x_in,
            Delta,
            A,
            B,
            C,
            chunk_size=self.config.chunk_size,
            D=None,
            initial_state=None if state is None else state.ssm,
        )
        window = None
        if self.intervention is not None and self.intervention.window is not None:
            # the full scan above still advances ssm_state, so removing the window continues exactly
            y, window = self._windowed_scan(x_in, Delta, A, B, C, None if state is None else state.window)
        return self._output(y, x, z), LayerState(conv_state, ssm_state, window)

    def _windowed_scan(self, x, Delta, A, B, C, buf: WindowState | None):
        """Eq. 8 over the buffered last w-1 inputs plus the new ones: y_t = C_t h^X_t - alpha_{t-w+1:t} C_t h^X_{t-w}.

        h^X is a scan from zero over [buffer; new] (only the last w tokens of it matter), and C_t h^X_{t-w}
        is the same scan queried with C shifted w positions earlier. Cost O(w + T) per call, so `step`
        under a window costs O(w) per token: fine for probes, not for serving.
        """
        w = int(self.intervention.window)
        if buf is not None:
            x = torch.cat([buf.x.to(x.dtype), x], dim=1)
            Delta = torch.cat([buf.dt, Delta], dim=1)
            B = torch.cat([buf.B.to(B.dtype), B], dim=1)
            m = buf.x.shape[1]
        else:
            m = 0
        total = x.shape[1]
        C_full = F.pad(C, (0, 0, 0, 0, m, 0))  # no queries at buffered positions
        y_all, _ = self.ops.ssd(x, Delta, A, B, C_full, chunk_size=self.config.chunk_size)
        # C_{s+w} h^X_s: query the state w positions back
        C_shift = F.pad(C_full[:, w:], (0, 0, 0, 0, 0, min(w, total)))
        y_lag, _ = self.ops.ssd(x, Delta, A, B, C_shift, chunk_size=self.config.chunk_size)
        # log alpha_{t-w+1:t} = A * sum_{j=t-w+1..t} Delta_j, from a float64 cumsum (exact enough at 1M tokens)
        cs = F.pad(torch.cumsum(Delta.double(), dim=1), (0, 0, 1, 0))  # [B, total+1, H]
        win_sum = cs[:, w:] - cs[:, :-w]  # t = w-1 .. total-1
        decay = torch.exp(A.double() * win_sum).to(y_all.dtype)  # [B, total-w+1, H]
        y = y_all.clone()
        if total > w:
            y[:, w:] = y_all[:, w:] - decay[:, 1:, :, None] * y_lag[:, : total - w]
        keep = w - 1
        new_buf = WindowState(
            x[:, total - min(keep, total) :], Delta[:, total - min(keep, total) :], B[:, total - min(keep, total) :]
        )
        return y[:, m:], new_buf

    # ------------------------------------------------------------------------------------------
    def step(self, u: torch.Tensor, state: LayerState) -> tuple[torch.Tensor, LayerState]:
        """One token: u [B, d_model] -> (out [B, d_model], new state)."""
        if self.intervention is not None and self.intervention.window is not None:
            out, new_state = self.forward(u[:, None], state)
            return out[:, 0], new_state
        z, xBC, dt_raw = self._split_proj(self.in_proj(u))
        xBC, conv_state = causal_conv1d_step(xBC, self.conv1d.weight[:, 0], self.conv1d.bias, state.conv)
        x, B, C = self._split_xbc(xBC)
        x_in, Delta, A, B = self._discretise(dt_raw, x, B)
        y, ssm_state = ssd_step(x_in, Delta, A, B, C, state.ssm)
        return self._output(y, x, z), LayerState(conv_state, ssm_state)
