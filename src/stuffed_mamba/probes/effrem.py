"""Effective Remembrance (Buitrago & Gu, ICML 2025, arXiv 2507.02782): how much the prediction at
position T still depends on the first t tokens.

With q(. | x) the model's next-token distribution after the context x (the same padded-vocabulary
softmax as the training loss),

    EffRem_T(t) = TV(q(. | x_{0:T}), q(. | x_{t:T})) = 1/2 sum_v |q(v | x_{0:T}) - q(v | x_{t:T})|

where x_{a:T} = x_a .. x_{T-1} (T - a tokens) and q predicts x_T. 0: the first t tokens no longer
matter at T; 1: the prediction is decided by them. A model that fails past T_train because it
cannot forget keeps EffRem_T(t) high for early t at T > T_train.

Every context runs as a chunked prefill (`Mamba2LM.advance`, no logits) and one forward over its
last token: memory is one chunk's whatever T. Work is shared: the runs that start at the same t
(t = 0 is the full context) are one prefill read at each T it serves, in increasing order.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from stuffed_mamba.probes.prefill import prefill
from stuffed_mamba.probes.registry import MIN_DOC_TOKENS, Probe, ProbeSettings, heading, knob


def plan(lengths: list[int], grid: dict[int, list[int]]) -> dict[int, list[int]]:
    """{start t: the T read from the run starting at t, increasing}; t = 0 reads every T."""
    runs: dict[int, set[int]] = {0: set(lengths)}
    for T, ts in grid.items():
        for t in ts:
            runs.setdefault(t, set()).add(T)
    return {t: sorted(Ts) for t, Ts in sorted(runs.items())}


@torch.no_grad()
def next_token_logprobs(model, row: torch.Tensor, start: int, ends: list[int], chunk_size: int):
    """row [1, L] -> {T: log q(. | x_{start:T}) [V_padded] fp64} for each T in `ends` (increasing),
    from one run over x_start .. x_{max T - 1}: prefill up to T - 1, then one forward over x_{T-1}."""
    out, state, pos = {}, None, start
    for T in ends:
        if pos < T - 1:
            state = prefill(model, row[:, pos : T - 1], state, chunk_size=chunk_size)
        step = model(row[:, T - 1 : T], state=state)
        out[T] = torch.log_softmax(step.logits[0, -1].double(), dim=-1).cpu()
        state, pos = step.state, T
        del step
    return out


def tv(logp: torch.Tensor, logq: torch.Tensor) -> float:
    """Total variation 1/2 sum_v |p_v - q_v| of two log-distributions [V] (fp64)."""
    return 0.5 * float((logp.exp() - logq.exp()).abs().sum())


@torch.no_grad()
def effective_remembrance(
    model,
    input_ids: torch.Tensor,
    grid: dict[int, list[int]],
    *,
    chunk_size: int = 4096,
    deadline: float | None = None,
    progress: Callable[[int], None] | None = None,
) -> dict:
    """input_ids [n, L >= max T], grid {T: [t, ...]} with 1 <= t < T -> {"effrem": {T: [n_done, len(ts)]
    fp64 tensor of EffRem_T(t)}, "grid": grid}. Sequences run one at a time; with a `deadline`
    (time.monotonic()) those done by then (at least one) are kept."""
    lengths = sorted(grid)
    if input_ids.dim() != 2 or input_ids.shape[1] < lengths[-1]:
        raise ValueError(f"input_ids must be [n, >= {lengths[-1]}], got shape {tuple(input_ids.shape)}")
    device = next(model.parameters()).device
    runs = plan(lengths, grid)
    rows = {T: [] for T in lengths}
    for i, row in enumerate(input_ids):
        if i and deadline is not None and time.monotonic() > deadline:
            break
        row = row[: lengths[-1]].to(device)[None]
        full = next_token_logprobs(model, row, 0, runs[0], chunk_size)  # q(. | x_{0:T}) per T
        got = {}
        for t, ends in runs.items():
            if t:
                for T, logq in next_token_logprobs(model, row, t, ends, chunk_size).items():
                    got[T, t] = tv(full[T], logq)
        for T in lengths:
            rows[T].append([got[T, t] for t in grid[T]])
        if progress is not None:
            progress(i + 1)
    return {"grid": grid, "effrem": {T: torch.tensor(r, dtype=torch.float64) for T, r in rows.items()}}


# ------------------------------------------------------------------------------------------------
@dataclass
class EffRemConfig(ProbeSettings):
    """Effective Remembrance (Buitrago & Gu 2025): TV distance of q(.|x_0..T) and q(.|x_t..T), per T and t."""

    enabled: bool = knob(False, "run this probe (off by default: ~(T/2 per t) tokens of prefill each)", train_only=True)
    lengths: list[int] | None = knob(None, "positions T, e.g. 2K,8K (default: `multiples` of T_train)", tokens=True)
    multiples: list[float] = knob([1.0, 2.0, 4.0], "default T as multiples of T_train")
    t_fractions: list[float] = knob(
        [0.125, 0.25, 0.5, 0.75, 0.875], "t as fractions of each T (t = T/2 is always measured)"
    )
    t_tokens: list[int] = knob([], "absolute t, at every T > t (one run serves them all)", tokens=True)
    samples: int = knob(2, "evaluation sequences averaged over")
    min_doc_tokens: int = knob(MIN_DOC_TOKENS, "appendix F: evaluation documents of at least this many tokens")
    prefill_chunk: int = knob(4096, "tokens per prefill forward; the state is carried between chunks", flag="--chunk")
    time_budget_s: float = knob(60.0, "stop starting new samples past this many seconds (training)", train_only=True)


class EffRemProbe(Probe):
    name = "effrem"
    Config = EffRemConfig
    needs_text = True
    layout = {
        "EffRem_T(T/2) per T (0: the first half no longer matters at T, 1: it decides)": [
            "Multiline",
            [r"probes/effrem/at_half/.*"],
        ],
        "EffRem_T(t) per (T, t)": ["Multiline", [r"probes/effrem/T=.*"]],
    }

    def lengths(self, cfg, ctx) -> list[int]:
        if cfg.lengths:
            return sorted({int(T) for T in cfg.lengths})
        if not ctx.train_length:
            raise ValueError("effrem: T_train unknown: pass --lengths (e.g. 2K,8K) or --train-length")
        return sorted({int(round(ctx.train_length * m)) for m in cfg.multiples})

    def grid(self, cfg, ctx) -> dict[int, list[int]]:
        """{T: sorted t}: the fractions of T, T/2 and the absolute t below T, each in [1, T - 1]."""
        out = {}
        for T in self.lengths(cfg, ctx):
            ts = {int(round(f * T)) for f in cfg.t_fractions} | {T // 2} | {t for t in cfg.t_tokens if t < T}
            out[T] = sorted(min(max(t, 1), T - 1) for t in ts)
            out[T] = sorted(set(out[T]))
        return out

    def check(self, cfg, ctx):
        if cfg.samples < 1 or cfg.prefill_chunk < 1:
            raise ValueError("effrem: samples and prefill_chunk must be >= 1")
        if any(not 0 < f < 1 for f in cfg.t_fractions) or any(t < 1 for t in cfg.t_tokens):
            raise ValueError("effrem: t_fractions must be in (0, 1) and t_tokens >= 1")
        lengths = self.lengths(cfg, ctx)
        if not lengths or lengths[0] < 2:
            raise ValueError(f"effrem: every T must be >= 2 tokens, got {lengths}")

    def inputs(self, cfg, ctx):
        self.check(cfg, ctx)
        grid = self.grid(cfg, ctx)
        return ctx.text(self.name, max(grid), cfg.samples, cfg.min_doc_tokens), grid

    def run(self, model, inputs, cfg, deadline=None, progress=None):
        ids, grid = inputs
        return effective_remembrance(
            model, ids, grid, chunk_size=cfg.prefill_chunk, deadline=deadline, progress=progress
        )

    def summary(self, result, cfg, ctx):
        curves, at_half = {}, {}
        for T, ts in result["grid"].items():
            mean = result["effrem"][T].mean(0).tolist()
            curves[str(T)] = {"t": ts, "effrem": mean}
            at_half[str(T)] = mean[ts.index(T // 2)]
        n = next(iter(result["effrem"].values())).shape[0]
        return {"train_length": ctx.train_length, "samples": n, "curves": curves, "at_half": at_half}

    def scalars(self, summary):
        out = {f"at_half/T={T}": v for T, v in summary["at_half"].items()}
        for T, c in summary["curves"].items():
            out.update({f"T={T}/t={t}": v for t, v in zip(c["t"], c["effrem"], strict=True)})
        return out

    def figures(self, result, cfg, ctx, note=""):
        from stuffed_mamba.probes.plots import _fmt_len, _plt

        plt = _plt()
        fig, ax = plt.subplots(figsize=(6, 3.5))
        for T, c in self.summary(result, cfg, ctx)["curves"].items():
            ax.plot(c["t"], c["effrem"], marker="o", ms=3, label=f"T = {_fmt_len(int(T))}")
        if ctx.train_length:
            ax.axvline(ctx.train_length, color="red", ls=":", label="t = T_train")
        ax.set_xscale("log")
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel("t: first tokens removed")
        ax.set_ylabel("EffRem_T(t) = TV(q(.|x_0..T), q(.|x_t..T))")
        ax.set_title(heading("Effective Remembrance", note), fontsize=9)
        ax.legend(fontsize=7)
        fig.tight_layout()
        return {"curves": fig}

    def table(self, result, summary, cfg, note=""):
        from stuffed_mamba.probes.tables import fmt_len, render

        rows = []
        for T, c in summary["curves"].items():
            per = result["effrem"][int(T)]
            for j, (t, v) in enumerate(zip(c["t"], c["effrem"], strict=True)):
                rows.append([fmt_len(int(T)), t, f"{t / int(T):.3f}", f"{v:.4f}", f"{float(per[:, j].max()):.4f}"])
        title = heading(f"Effective Remembrance, mean over {summary['samples']} sequences", note)
        return render(["T", "t", "t/T", "EffRem", "max"], rows, title)


PROBE = EffRemProbe()
