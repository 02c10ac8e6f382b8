"""Training-free interventions on the update rule h_t = alpha_t h_{t-1} + B_t (Delta_t x_t) (section 3.2.2).

All are applied by changing the inputs of the SSD op, so they work on every backend:
- `dt_scale` (LongMamba, appendix C): Delta_t <- s * Delta_t (changes both alpha_t and B_bar_t).
- `alpha_scale` (RRI): alpha_t <- s * alpha_t. Since alpha_t = exp(Delta_t A), this is
  Delta'_t = Delta_t + log(s)/A with x'_t = x_t Delta_t / Delta'_t, which keeps B_bar_t x_t unchanged.
- `b_scale` (RRI): B_t <- s * B_t.
- `window` (eq. 8): y_t = C_t (h_t - alpha_{t-w+1:t} h_{t-w}), keeping only the last w tokens;
  alpha_{t-w+1:t} = exp(A * sum of Delta over the window), never a running product of alphas.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Intervention:
    dt_scale: float = 1.0
    alpha_scale: float = 1.0
    b_scale: float = 1.0
    window: int | None = None

    def __post_init__(self):
        if not self.dt_scale > 0:
            raise ValueError(f"Intervention.dt_scale must be > 0, got {self.dt_scale}")
        if not 0 < self.alpha_scale <= 1:
            raise ValueError(f"Intervention.alpha_scale must be in (0, 1], got {self.alpha_scale}")
        if not self.b_scale > 0:
            raise ValueError(f"Intervention.b_scale must be > 0, got {self.b_scale}")
        if self.window is not None and int(self.window) < 1:
            raise ValueError(f"Intervention.window must be >= 1 or None, got {self.window}")

    @property
    def is_identity(self) -> bool:
        return self.dt_scale == 1 and self.alpha_scale == 1 and self.b_scale == 1 and self.window is None

    @classmethod
    def parse(cls, spec: str | None) -> Intervention | None:
        """From the CLI: "none", "rri" (alpha x 0.9999, B x 0.75), "rri:A,B", "longmamba:S", "window:W"."""
        if spec is None or spec in ("", "none"):
            return None
        name, _, arg = spec.partition(":")
        try:
            if name == "rri":
                a, b = (float(v) for v in arg.split(",")) if arg else (0.9999, 0.75)
                return cls(alpha_scale=a, b_scale=b)
            if name == "longmamba":
                return cls(dt_scale=float(arg) if arg else 0.5)
            if name == "window":
                return cls(window=int(arg))
        except ValueError as e:
            raise ValueError(f"bad intervention {spec!r}: {e}") from None
        raise ValueError(f"unknown intervention {spec!r}; use rri[:A,B], longmamba[:S] or window:W")
