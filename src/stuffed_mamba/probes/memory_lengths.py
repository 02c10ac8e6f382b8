"""Per-head memory lengths tau = 1/(1 - alpha) and their spread (sections 3.2 and 4).

alpha_t = exp(Delta_t A) is the fraction of a head's state h_{t-1} kept at step t, so a
contribution decays like alpha^k after k tokens: its time constant is 1/(1 - alpha) tokens.
Per layer and head, alpha_bar = exp(mean_t Delta_t A) over a probe text gives

    tau = 1 / (1 - alpha_bar) = -1 / expm1(mean_t Delta_t A)   (tokens; expm1: no rounding near alpha = 1)

Heads whose tau exceeds T_train hold information longer than any training segment: the
ones that must learn to forget. Watching the spread of tau over training shows whether the
model moves its memory lengths below T_train (learns to forget) or keeps a tail above it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from stuffed_mamba.probes.prefill import prefill
from stuffed_mamba.probes.registry import Probe, ProbeSettings, heading, knob


@torch.no_grad()
def memory_lengths(model, input_ids: torch.Tensor, *, chunk_size: int = 4096) -> torch.Tensor:
    """input_ids [B, T] -> tau [n_layer, nheads] fp64: 1/(1 - exp(mean over b, t of Delta_t A))."""
    mixers = [layer.mixer for layer in model.backbone.layers]
    sums = torch.zeros(len(mixers), mixers[0].config.nheads, dtype=torch.float64)  # sum of Delta*A [L, H]

    def hook_for(i):
        def hook(mixer, args, kwargs):
            u = args[0] if args else kwargs["u"]
            sums[i] += mixer.ssm_inputs(u)["log_alpha"].double().sum(dim=(0, 1)).cpu()  # [B, t, H] -> [H]

        return hook

    handles = [m.register_forward_pre_hook(hook_for(i), with_kwargs=True) for i, m in enumerate(mixers)]
    try:
        prefill(model, input_ids, chunk_size=chunk_size)
    finally:
        for h in handles:
            h.remove()
    mean_log_alpha = sums / input_ids.numel()  # [L, H]
    return -1.0 / torch.expm1(mean_log_alpha)


@dataclass
class MemoryLengthsConfig(ProbeSettings):
    """Per-head memory lengths 1/(1 - alpha) and their spread (sections 3.2, 4): heads remembering past T_train."""

    length: int = knob(1024, "tokens of the probe text (the passkey filler)", tokens=True)
    prefill_chunk: int = knob(4096, "tokens per forward", flag="--chunk")
    time_budget_s: float = knob(60.0, "stop starting new samples past this many seconds (training)", train_only=True)


class MemoryLengthsProbe(Probe):
    name = "memory_lengths"
    Config = MemoryLengthsConfig
    layout = {
        "memory length 1/(1-alpha) over heads (tokens)": ["Multiline", [r"probes/memory_lengths/tau_.*"]],
        "heads remembering past T_train": ["Multiline", [r"probes/memory_lengths/heads_beyond_train_length"]],
    }

    def inputs(self, cfg, ctx):
        from stuffed_mamba.probes.passkey import build_prompt

        return torch.tensor([build_prompt(ctx.need_tokenizer(self.name), cfg.length, 0.5, "12345")])

    def run(self, model, ids, cfg, deadline=None):
        return memory_lengths(model, ids.to(next(model.parameters()).device), chunk_size=cfg.prefill_chunk)

    def summary(self, tau, cfg, ctx):
        flat = tau.flatten()
        q = torch.quantile(flat, torch.tensor([0.0, 0.1, 0.5, 0.9, 1.0], dtype=tau.dtype)).tolist()
        out = {
            "train_length": ctx.train_length,
            "n_layer": tau.shape[0],
            "nheads": tau.shape[1],
            "tau_min": q[0],
            "tau_p10": q[1],
            "tau_median": q[2],
            "tau_p90": q[3],
            "tau_max": q[4],
            "log10_spread": math.log10(q[4] / q[0]),
            "tau": tau.tolist(),
        }
        if ctx.train_length:
            out["heads_beyond_train_length"] = int((flat > ctx.train_length).sum())
        return out

    def scalars(self, summary):
        keys = ("tau_min", "tau_p10", "tau_median", "tau_p90", "tau_max", "log10_spread", "heads_beyond_train_length")
        return {k: summary[k] for k in keys if k in summary}

    def figures(self, tau, cfg, ctx, note=""):
        from stuffed_mamba.probes.plots import _plt

        plt = _plt()
        fig, ax = plt.subplots(figsize=(6, 3.5))
        for layer, row in enumerate(tau.tolist()):
            ax.scatter([layer] * len(row), row, s=8, color="tab:blue")
        if ctx.train_length:
            ax.axhline(ctx.train_length, color="red", ls=":", label="T_train")
            ax.legend(fontsize=8)
        ax.set_yscale("log")
        ax.set_xlabel("layer")
        ax.set_ylabel("1/(1-alpha) (tokens)")
        ax.set_title(heading("memory length per head", note), fontsize=9)
        fig.tight_layout()
        return {"heads": fig}

    def table(self, tau, summary, cfg, note=""):
        from stuffed_mamba.probes.tables import render

        rows = [
            [layer, f"{min(r):.3g}", f"{sorted(r)[len(r) // 2]:.3g}", f"{max(r):.3g}"]
            for layer, r in enumerate(tau.tolist())
        ]
        text = render(["layer", "min tau", "median tau", "max tau"], rows, heading("memory length 1/(1-alpha)", note))
        beyond = summary.get("heads_beyond_train_length")
        tail = "" if beyond is None else f"; {beyond} of {tau.numel()} heads beyond T_train = {summary['train_length']}"
        return f"{text}\nspread: log10(max/min) = {summary['log10_spread']:.2f}{tail}"


PROBE = MemoryLengthsProbe()
