"""Statistics of the recurrent state over time (section 3.3, figures 5, 6, 16, 17).

On the "newlines" prompt (only "\\n" tokens: reproducible and smooth), a model that did not
learn to forget sees the mean and variance of some heads' SSM states h_t [P, N] change
sharply once t passes T_train, the variance growth coming from a few outlier channels.
The conv states (the last d_conv-1 inputs of the short convolution) are measured too:
they should stay stable (figure 17).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from stuffed_mamba.probes.prefill import prefill
from stuffed_mamba.probes.registry import Probe, ProbeSettings, heading, knob


def newlines_prompt(tokenizer, length: int) -> torch.Tensor:
    """The "newlines" prompt: `length` copies of the token of "\\n" -> LongTensor [1, length]."""
    ids = tokenizer.encode("\n")
    if len(ids) != 1:
        raise ValueError(f'the tokenizer encodes "\\n" as {len(ids)} tokens {ids}; expected one')
    return torch.full((1, int(length)), ids[0], dtype=torch.long)


def time_points(length: int, n_points: int, train_length: int | None = None) -> list[int]:
    """n_points evenly spaced t in [1, length], plus T_train (the growth reference) when within."""
    pts = {max(1, round(length * (k + 1) / n_points)) for k in range(n_points)}
    if train_length is not None and train_length <= length:
        pts.add(int(train_length))
    return sorted(pts)


@dataclass
class StateStats:
    """Per-head statistics of h_t over the P x N entries, at the time points t (batch-averaged).

    t: [K]; mean, var: [L, H, K]; conv_mean, conv_var: [L, K] over a layer's conv state;
    last_ssm: [L, H, P, N] fp32, h at t[-1] of the first prompt (for the outlier channels).
    """

    t: list[int]
    mean: torch.Tensor
    var: torch.Tensor
    conv_mean: torch.Tensor
    conv_var: torch.Tensor
    last_ssm: torch.Tensor
    complete: bool = True


@torch.no_grad()
def state_statistics(
    model, input_ids: torch.Tensor, points: Sequence[int], *, max_chunk: int = 4096, deadline: float | None = None
) -> StateStats:
    """Run input_ids [B, T] through the model piece by piece, stopping at each t in `points`
    (1-based: the state after t tokens) to measure every layer's states there."""
    T = input_ids.shape[1]
    points = sorted(int(p) for p in points if 1 <= int(p) <= T)
    if not points:
        raise ValueError(f"no time point within [1, {T}]")
    mean, var, cmean, cvar, ts = [], [], [], [], []
    state, pos, complete = None, 0, True
    for t in points:
        if deadline is not None and ts and time.monotonic() > deadline:
            complete = False
            break
        state = prefill(model, input_ids[:, pos:t], state, chunk_size=max_chunk)
        pos = t
        ssm = torch.stack([layer.ssm for layer in state.layers]).float()  # [L, B, H, P, N]
        conv = torch.stack([layer.conv for layer in state.layers]).float()  # [L, B, C, K-1]
        mean.append(ssm.mean(dim=(-2, -1)).mean(dim=1))  # [L, H]
        var.append(ssm.var(dim=(-2, -1), unbiased=False).mean(dim=1))
        cmean.append(conv.mean(dim=(-2, -1)).mean(dim=1))  # [L]
        cvar.append(conv.var(dim=(-2, -1), unbiased=False).mean(dim=1))
        ts.append(t)
    return StateStats(
        t=ts,
        mean=torch.stack(mean, dim=-1).cpu(),
        var=torch.stack(var, dim=-1).cpu(),
        conv_mean=torch.stack(cmean, dim=-1).cpu(),
        conv_var=torch.stack(cvar, dim=-1).cpu(),
        last_ssm=ssm[:, 0].cpu(),
        complete=complete,
    )


def outlier_channels(h: torch.Tensor, top_k: int = 8, share_of: float = 0.01) -> dict:
    """The channels of one head's state h [P, N] that hold its variance (figure 6).

    Returns the top_k entries by |h - mean| with their (p, n) and z-score, and the share of
    the total squared deviation held by the top `share_of` fraction of the P*N channels
    (near `share_of` for a Gaussian-like state, near 1 when a few outliers dominate).
    """
    dev = (h.float() - h.float().mean()).flatten()
    sq = dev.square()
    std = dev.std(unbiased=False).clamp_min(1e-30)
    k_share = max(1, math.ceil(share_of * dev.numel()))
    share = float(sq.topk(k_share).values.sum() / sq.sum().clamp_min(1e-30))
    top = dev.abs().topk(min(top_k, dev.numel()))
    N = h.shape[-1]
    channels = [
        {"p": int(i) // N, "n": int(i) % N, "value": float(h.flatten()[i]), "z": float(dev[i] / std)}
        for i in top.indices
    ]
    return {"top": channels, "top_fraction": share_of, "share_of_sq_deviation": share}


def state_summary(stats: StateStats, train_length: int, top_heads: int = 3) -> dict:
    """Growth of the state statistics past T_train, and the outlier channels of the heads that grow most.

    var growth of a head = max_{t > T_train} var_t / var_{T_train}; mean growth = max_{t > T_train}
    |mean_t| / |mean_{T_train}|. None when no point lies past T_train.
    """
    t = torch.tensor(stats.t)
    L, H, _ = stats.var.shape
    out: dict = {
        "train_length": train_length,
        "t": stats.t,
        "complete": stats.complete,
        "var_max": float(stats.var[:, :, -1].max()),
        "var_max_per_layer": [float(v) for v in stats.var[:, :, -1].max(dim=1).values],
    }
    ref = (t == train_length).nonzero()
    after = t > train_length
    if ref.numel() == 0 or not after.any():
        out.update(var_growth_max=None, mean_growth_max=None, conv_var_growth_max=None, outliers=[])
        return out
    r = int(ref[0])
    eps = 1e-30
    var_growth = stats.var[:, :, after].max(dim=-1).values / stats.var[:, :, r].clamp_min(eps)  # [L, H]
    mean_growth = stats.mean[:, :, after].abs().max(dim=-1).values / stats.mean[:, :, r].abs().clamp_min(eps)
    conv_growth = stats.conv_var[:, after].max(dim=-1).values / stats.conv_var[:, r].clamp_min(eps)  # [L]
    order = var_growth.flatten().argsort(descending=True)[:top_heads]
    out.update(
        var_growth_max=float(var_growth.max()),
        var_growth_per_layer=[float(v) for v in var_growth.max(dim=1).values],
        mean_growth_max=float(mean_growth.max()),
        conv_var_growth_max=float(conv_growth.max()),
        heads_var_growth_over_2=int((var_growth > 2).sum()),
        outliers=[
            {
                "layer": int(i) // H,
                "head": int(i) % H,
                "var_growth": float(var_growth.flatten()[i]),
                **outlier_channels(stats.last_ssm[int(i) // H, int(i) % H]),
            }
            for i in order
        ],
    )
    return out


# ------------------------------------------------------------------------------------------------
@dataclass
class StatesConfig(ProbeSettings):
    """Mean/variance of every head's SSM state over time on the "newlines" prompt (section 3.3, figs. 5-6)."""

    length: int | None = knob(None, "prompt length (default 4 x T_train)", tokens=True)
    n_points: int = knob(32, "evenly spaced time points at which the state is measured", flag="--points")
    prefill_chunk: int = knob(4096, "tokens per forward; the state is carried between chunks", flag="--chunk")
    time_budget_s: float = knob(300.0, "stop starting new samples past this many seconds (training)", train_only=True)


class StatesProbe(Probe):
    name = "states"
    Config = StatesConfig
    layout = {"state growth past T_train": ["Multiline", [r"probes/states/.*growth.*", r"probes/states/var_max"]]}

    def inputs(self, cfg, ctx):
        T_train = ctx.need_train_length(self.name)
        length = cfg.length or 4 * T_train
        return newlines_prompt(ctx.need_tokenizer(self.name), length), time_points(length, cfg.n_points, T_train)

    def run(self, model, inputs, cfg, deadline=None):
        ids, points = inputs
        ids = ids.to(next(model.parameters()).device)
        return state_statistics(model, ids, points, max_chunk=cfg.prefill_chunk, deadline=deadline)

    def summary(self, stats, cfg, ctx):
        return {
            **state_summary(stats, ctx.need_train_length(self.name)),
            "mean": stats.mean.tolist(),
            "var": stats.var.tolist(),
        }

    def scalars(self, summary):
        keys = ("var_growth_max", "mean_growth_max", "var_max", "conv_var_growth_max")
        return {k: summary[k] for k in keys if summary.get(k) is not None}

    def figures(self, stats, cfg, ctx, note=""):
        from stuffed_mamba.probes.plots import state_curves

        return {"curves": state_curves(stats, ctx.train_length)}

    def table(self, stats, summary, cfg, note=""):
        from stuffed_mamba.probes.tables import states_table

        return states_table(summary, title=heading("SSM state statistics on the newlines prompt", note))


PROBE = StatesProbe()
