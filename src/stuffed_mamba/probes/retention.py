"""First-token retention (section 3.2.1, eq. 6, figure 3).

alpha_{1:t} = prod_{j=1..t} alpha_j = exp(sum_{j=1..t} Delta_j A)  (j = 1 included, as in eq. 6)

is how much of the first token's insertion B_bar_1 x_1 is still in h_t. A head that keeps it
near 1 at t = T_train has not learned to forget. Computed as an fp32 cumulative sum of
log alpha_j = Delta_j A, never as a running product of alphas (which would underflow and
round). Delta comes from each mixer's `ssm_inputs` on the layer's real input, so an
intervention set on the model (LongMamba's Delta scale, RRI's alpha scale) shows up here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from stuffed_mamba.probes.prefill import prefill
from stuffed_mamba.probes.registry import MIN_DOC_TOKENS, Context, Probe, ProbeSettings, heading, knob


@torch.no_grad()
def first_token_retention(model, input_ids: torch.Tensor, *, chunk_size: int = 4096) -> torch.Tensor:
    """(contract) alpha_{1:t} per layer and head, averaged over the batch.

    input_ids: [B, T] -> [n_layer, nheads, T] fp32 (index t-1 holds alpha_{1:t}).
    The text runs through the model in chunks of `chunk_size` carrying the state; each
    mixer's input u is caught by a forward pre-hook and turned into Delta_t A.
    """
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids must be [B, T], got shape {tuple(input_ids.shape)}")
    mixers = [layer.mixer for layer in model.backbone.layers]
    caught: list = [None] * len(mixers)

    def hook_for(i):
        def hook(mixer, args, kwargs):
            u = args[0] if args else kwargs["u"]
            caught[i] = mixer.ssm_inputs(u)["log_alpha"].float()  # [B, t, H] = Delta_t * A

        return hook

    handles = [m.register_forward_pre_hook(hook_for(i), with_kwargs=True) for i, m in enumerate(mixers)]
    B, T = input_ids.shape
    offset = None  # [L, B, H]: sum of Delta*A over the chunks already seen
    out = []
    try:
        state = None
        for s in range(0, T, chunk_size):
            state = prefill(model, input_ids[:, s : s + chunk_size], state, chunk_size=chunk_size)
            log_alpha = torch.stack(caught)  # [L, B, t, H]
            if offset is None:
                offset = torch.zeros_like(log_alpha[:, :, 0])
            csum = torch.cumsum(log_alpha, dim=2) + offset[:, :, None]  # [L, B, t, H]
            offset = csum[:, :, -1]
            out.append(torch.exp(csum).mean(dim=1).transpose(1, 2))  # [L, H, t]
            caught[:] = [None] * len(mixers)
    finally:
        for h in handles:
            h.remove()
    return torch.cat(out, dim=2)


def summary_points(T: int, train_length: int) -> list[int]:
    """t = T_train, 2 T_train, 4 T_train, ... within T, and T itself."""
    pts, t = [], train_length
    while t <= T:
        pts.append(t)
        t *= 2
    if not pts or pts[-1] != T:
        pts.append(T)
    return pts


def retention_summary(alpha: torch.Tensor, train_length: int, thresholds: Sequence[float] = (0.5, 0.9, 0.99)) -> dict:
    """Summaries of alpha [L, H, T] at t = T_train and beyond: the max over heads, each layer's max,
    and how many heads keep more than each threshold of the first token."""
    L, H, T = alpha.shape
    at = {}
    for t in summary_points(T, train_length):
        a = alpha[:, :, t - 1].float()  # [L, H]
        flat = int(a.argmax())
        at[f"t={t}"] = {
            "t": t,
            "max": float(a.max()),
            "argmax_layer_head": [flat // H, flat % H],
            "max_per_layer": [float(v) for v in a.max(dim=1).values],
            "heads_above": {f"{th:g}": int((a > th).sum()) for th in thresholds},
        }
    return {"train_length": train_length, "T": T, "n_layer": L, "nheads": H, "at": at}


def max_curve(alpha: torch.Tensor, points: int = 64) -> dict:
    """max over layers and heads of alpha_{1:t} [L, H, T] at ~`points` log-spaced t: the curve the
    figure over training draws for each probe step (small enough for the step's JSON)."""
    T = alpha.shape[-1]
    t = torch.unique(torch.logspace(0, math.log10(T), points).round().long().clamp(1, T))
    return {"t": t.tolist(), "max": alpha.float().amax(dim=(0, 1))[t - 1].tolist()}


# ------------------------------------------------------------------------------------------------
@dataclass
class RetentionConfig(ProbeSettings):
    """First-token retention alpha_{1:t} = exp(sum_{j<=t} Delta_j A) per layer and head (eq. 6, fig. 3)."""

    length: int | None = knob(None, "probe text length (default 4 x T_train)", tokens=True)
    text: str | None = knob(
        None,
        "probe text (default: data when a corpus is known, else the passkey filler)",
        choices=["data", "passkey", "newlines"],
    )
    samples: int = knob(1, "evaluation sequences averaged over (data text)")
    min_doc_tokens: int = knob(MIN_DOC_TOKENS, "appendix F: evaluation documents of at least this many tokens")
    prefill_chunk: int = knob(4096, "tokens per forward; the state is carried between chunks", flag="--chunk")
    thresholds: list[float] = knob([0.5, 0.9, 0.99], "count the heads keeping more than these of the first token")
    time_budget_s: float = knob(300.0, "stop starting new samples past this many seconds (training)", train_only=True)


class RetentionProbe(Probe):
    name = "retention"
    Config = RetentionConfig
    needs_text = True
    layout = {
        "first-token retention, max over heads": ["Multiline", [r"probes/retention/max_alpha/.*"]],
        "heads retaining the first token": ["Multiline", [r"probes/retention/heads_above_.*"]],
    }

    def text(self, cfg, ctx: Context) -> str:
        return cfg.text or ("data" if ctx.eval_text is not None else "passkey")

    def inputs(self, cfg, ctx):
        from stuffed_mamba.probes.passkey import build_prompt
        from stuffed_mamba.probes.states import newlines_prompt

        length = cfg.length or 4 * ctx.need_train_length(self.name)
        text = self.text(cfg, ctx)
        if text == "data":
            return ctx.text(self.name, length, cfg.samples, cfg.min_doc_tokens)
        if text == "passkey":
            return torch.tensor([build_prompt(ctx.need_tokenizer(self.name), length, 0.5, "12345")])
        return newlines_prompt(ctx.need_tokenizer(self.name), length)

    def run(self, model, ids, cfg, deadline=None):
        device = next(model.parameters()).device
        return first_token_retention(model, ids.to(device), chunk_size=cfg.prefill_chunk).cpu()  # [L, H, T]

    def summary(self, alpha, cfg, ctx):
        s = retention_summary(alpha, ctx.need_train_length(self.name), thresholds=cfg.thresholds)
        return {"text": self.text(cfg, ctx), "length": int(alpha.shape[-1]), **s, "max_alpha_curve": max_curve(alpha)}

    def scalars(self, summary):
        out = {}
        for where, s in summary["at"].items():
            out[f"max_alpha/{where}"] = s["max"]
            out.update({f"heads_above_{th}/{where}": n for th, n in s["heads_above"].items()})
        return out

    def figures(self, alpha, cfg, ctx, note=""):
        from stuffed_mamba.probes.plots import retention_curves

        return {"curves": retention_curves(alpha, ctx.train_length)}

    def table(self, alpha, summary, cfg, note=""):
        from stuffed_mamba.probes.tables import retention_table

        return retention_table(
            summary, title=heading(f"first-token retention alpha_1:t ({summary['text']} text)", note)
        )


PROBE = RetentionProbe()
