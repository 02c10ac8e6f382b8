"""LM loss per token position on long evaluation text (figures 1, 4, 10; section 4.2).

A model that learned to forget keeps its loss flat past T_train; one that did not sees it
blow up. The paper's criterion (section 4.2): the model has learned to forget iff the loss
beyond T_train never exceeds 2x the maximum loss within T_train (prompts of 1M tokens,
loss averaged over 128 prompts).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from stuffed_mamba.probes.buckets import log_buckets
from stuffed_mamba.probes.registry import MIN_DOC_TOKENS, Probe, ProbeSettings, heading, knob
from stuffed_mamba.probes.tables import fmt_len, render


@torch.no_grad()
def loss_per_position(
    model,
    input_ids: torch.Tensor,
    *,
    chunk_size: int = 4096,
    deadline: float | None = None,
    progress: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """Cross-entropy at every position, averaged over prompts.

    input_ids: [n, T] -> [T-1] fp32, index i = -log p(token_{i+1} | tokens_0..i), so index
    i has seen i+1 tokens. Prompts run one at a time in chunks carrying the state (one
    chunk's logits [1, chunk, V] in memory at once). With a `deadline` (time.monotonic()),
    the prompts done by then are averaged (at least one). `progress(i)` after prompt i.
    """
    if input_ids.dim() != 2 or input_ids.shape[1] < 2:
        raise ValueError(f"input_ids must be [n, T] with T >= 2, got shape {tuple(input_ids.shape)}")
    device = next(model.parameters()).device
    n, T = input_ids.shape
    total = torch.zeros(T - 1, dtype=torch.float64)
    done = 0
    for row in input_ids:
        if done and deadline is not None and time.monotonic() > deadline:
            break
        row = row.to(device)[None]  # [1, T]
        state, parts = None, []
        for s in range(0, T - 1, chunk_size):
            e = min(s + chunk_size, T - 1)
            out = model(row[:, s:e], state=state)
            state = out.state
            # the same (padded-vocabulary) softmax as the training loss
            parts.append(F.cross_entropy(out.logits[0].float(), row[0, s + 1 : e + 1], reduction="none").cpu())
            del out
        total += torch.cat(parts).double()
        done += 1
        if progress is not None:
            progress(done)
    return (total / done).float()


FORGET_LIMIT = 2.0  # the criterion's factor: beyond T_train the loss stays within 2x the max within


def verdict(summary: dict) -> str:
    """The criterion's answer with its number and rule, as every printed or titled verdict says it:
    "learned to forget: yes: the loss beyond T_train peaks at 1.29x the loss within; no means above 2x"."""
    ratio = summary.get("beyond_over_within")
    if summary.get("max_beyond") is None:
        number = "nothing was measured beyond T_train"
    elif ratio is None or not math.isfinite(ratio):
        number = "the loss beyond T_train is not finite"
    else:
        number = f"the loss beyond T_train peaks at {ratio:.2f}x the loss within"
    return f"learned to forget: {'yes' if summary['learned_to_forget'] else 'no'}: {number}; no means above {FORGET_LIMIT:g}x"


def loss_table(summaries: dict, title: str = "") -> str:
    """summaries: {curve name: loss_summary(...)} over the same positions."""
    names = list(summaries)
    first = summaries[names[0]]
    header = ["position"] + names
    rows = []
    for i, pos in enumerate(first["bucket_positions"]):
        rows.append(
            [fmt_len(pos) if pos >= 1024 else pos]
            + [f"{summaries[n]['bucket_loss'][i]:.3f}" if i < len(summaries[n]["bucket_loss"]) else None for n in names]
        )
    t = render(header, rows, title)
    verdicts = []
    for n, s in summaries.items():
        beyond = "-" if s["max_beyond"] is None else f"{s['max_beyond']:.3f}"
        verdicts.append(f"{n}: max loss within T_train {s['max_within']:.3f}, beyond {beyond} -> {verdict(s)}")
    return f"{t}\nT_train = {first['train_length']}; " + "; ".join(verdicts)


def learned_to_forget(loss_per_position, train_length: int) -> bool:
    """(contract) False iff the loss beyond `train_length` ever exceeds 2x the max loss within it.

    loss_per_position: [T'] (tensor, array or list), index i = the loss after i+1 tokens.
    A non-finite loss beyond T_train counts as exceeding (a diverged model did not forget).
    With nothing beyond T_train the criterion holds vacuously.
    """
    loss = torch.as_tensor(loss_per_position, dtype=torch.float64).flatten()
    if train_length < 1 or train_length > loss.numel():
        raise ValueError(f"train_length must be in [1, {loss.numel()}], got {train_length}")
    within, beyond = loss[:train_length], loss[train_length:]
    if not torch.isfinite(within).all():
        raise ValueError("the loss within train_length is not finite")
    if beyond.numel() == 0:
        return True
    if not torch.isfinite(beyond).all():
        return False
    return bool(beyond.max() <= FORGET_LIMIT * within.max())


def loss_summary(loss: torch.Tensor, train_length: int, *, buckets: int = 24) -> dict:
    """Scalars for a loss-vs-position curve [T'] and the section-4.2 verdict."""
    loss = torch.as_tensor(loss, dtype=torch.float32)
    n = loss.numel()
    tl = min(train_length, n)
    within, beyond = loss[:tl], loss[tl:]
    centres, means = log_buckets(loss, buckets)
    max_within = float(within.max())
    max_beyond = float(beyond.max()) if beyond.numel() else None
    return {
        "train_length": train_length,
        "positions": n,
        "max_within": max_within,
        "mean_within": float(within.mean()),
        "max_beyond": max_beyond,
        "mean_beyond": float(beyond.mean()) if beyond.numel() else None,
        "beyond_over_within": (max_beyond / max_within) if max_beyond is not None and max_within > 0 else None,
        "learned_to_forget": learned_to_forget(loss, tl),
        "bucket_positions": centres,
        "bucket_loss": means,
    }


def late_loss_rise(loss: torch.Tensor, train_length: int) -> dict:
    """A softer view than the 2x criterion: how much the loss rose from [T_train/2, T_train) to
    the end of the context (mean over the last quarter of the positions)."""
    near = float(loss[max(0, train_length // 2) : train_length].mean())
    late = float(loss[-max(1, loss.numel() // 4) :].mean())
    return {"loss_near_train_length": near, "loss_late": late, "late_loss_rise": late - near}


# ------------------------------------------------------------------------------------------------
@dataclass
class PositionLossConfig(ProbeSettings):
    """LM loss per position on long evaluation text (section 4.2, figs. 1, 4, 10); learned_to_forget."""

    length: int | None = knob(None, "evaluation context in tokens (default 4 x T_train)", tokens=True)
    samples: int = knob(4, "evaluation sequences averaged over (the paper: 128 at 1M tokens)")
    buckets: int = knob(24, "log-spaced position buckets in the summary and table")
    min_doc_tokens: int = knob(MIN_DOC_TOKENS, "appendix F: evaluation documents of at least this many tokens")
    prefill_chunk: int = knob(4096, "tokens per forward; the state is carried between chunks", flag="--chunk")


class PositionLossProbe(Probe):
    name = "position_loss"
    command = "loss"
    Config = PositionLossConfig
    needs_text = True
    layout = {
        "loss within vs beyond T_train": [
            "Multiline",
            [r"probes/position_loss/(max|mean)_.*", r"probes/position_loss/beyond_over_within"],
        ],
        "learned to forget (1 = yes: the loss beyond T_train stays within 2x the max within)": [
            "Multiline",
            [r"probes/position_loss/learned_to_forget"],
        ],
        "loss by position": ["Multiline", [r"probes/position_loss/bucket/.*"]],
    }

    def inputs(self, cfg, ctx):
        length = cfg.length or 4 * ctx.need_train_length(self.name)
        return ctx.text(self.name, length + 1, cfg.samples, cfg.min_doc_tokens)  # each position with its next token

    def run(self, model, ids, cfg, deadline=None, progress=None):
        return loss_per_position(model, ids, chunk_size=cfg.prefill_chunk, deadline=deadline, progress=progress)

    def summary(self, loss, cfg, ctx):
        T_train = ctx.need_train_length(self.name)
        return {**loss_summary(loss, T_train, buckets=cfg.buckets), **late_loss_rise(loss, T_train)}

    def scalars(self, summary):
        keys = ("max_within", "max_beyond", "mean_within", "mean_beyond", "beyond_over_within", "late_loss_rise")
        out = {k: summary[k] for k in keys if summary.get(k) is not None}
        out["learned_to_forget"] = float(summary["learned_to_forget"])
        out.update(
            {f"bucket/t={t}": v for t, v in zip(summary["bucket_positions"], summary["bucket_loss"], strict=True)}
        )
        return out

    def figures(self, loss, cfg, ctx, note=""):
        from stuffed_mamba.probes.plots import loss_vs_position

        fig = loss_vs_position(loss, ctx.train_length, buckets=2 * cfg.buckets)
        if ctx.train_length and ctx.train_length <= loss.numel():
            fig.axes[0].set_title(heading(verdict(loss_summary(loss, ctx.train_length)), note), fontsize=8)
        return {"curve": fig}

    def table(self, loss, summary, cfg, note=""):
        return loss_table({note or "loss": summary}, title=heading("LM loss by position (log buckets)", note))


PROBE = PositionLossProbe()
