"""The start-up warning for recipes that train too short to learn forgetting (section 5.2)."""

from __future__ import annotations

from typing import Any

from stuffed_mamba.analysis.fits import PAPER_T_FORGET, PAPER_T_RECALL
from stuffed_mamba.analysis.state_size import resolve


def predicted_thresholds(model_cfg: Any) -> dict[str, float]:
    """N_S (floats) and the paper's predicted T_forget and T_recall (tokens) for a configuration.

    model_cfg: anything `state_size.resolve` accepts (Mamba2Config, a recipe's `model:` mapping,
    a size name, a config path). The laws were fitted on 36M..370M-parameter models; below the
    smallest state size they go negative, i.e. predict no threshold at all.
    """
    n_s = resolve(model_cfg).state_size
    return {
        "state_size": n_s,
        "t_forget": float(PAPER_T_FORGET.tokens(n_s)),
        "t_recall": float(PAPER_T_RECALL.tokens(n_s)),
    }


def forget_threshold_warning(
    model_cfg: Any, train_length: int, *, segments: int = 1, bptt: str = "truncated"
) -> str | None:
    """A one-paragraph warning when the gradient horizon < the paper's predicted T_forget, else None.

    Called by `stuffed-mamba fit` at start-up with the recipe's model section, `data.train_length`
    (the segment length T_train), `data.segments` and `optim.bptt`. The gradient horizon, the
    longest context a gradient spans, is T_train under truncated BPTT (the paper's setting) and
    segments x T_train under full BPTT.
    """
    p = predicted_thresholds(model_cfg)
    horizon = train_length * (segments if bptt == "full" else 1)
    if horizon >= p["t_forget"]:
        return None
    need = _round_up_pow2(p["t_forget"])
    if bptt == "full":
        what = f"the gradient horizon {horizon} (full BPTT: {segments} segments x train_length {train_length})"
        fix = f"use data.segments x data.train_length >= {need}"
    else:
        what = f"train_length {train_length} (the gradient horizon of truncated BPTT)"
        fix = f"use train_length >= {need}, or optim.bptt=full with data.segments x data.train_length >= {need}"
    return (
        f"{what} is below the forgetting threshold predicted for this state size: "
        f"N_S = {p['state_size'] / 1e6:.2f}M floats gives T_forget = 5.172*N_S - 4.469 "
        f"= {p['t_forget'] / 1e3:.1f}K tokens (paper, section 5.2). Trained this short, Mamba-2 "
        f"tends not to learn to forget, and its loss can blow up beyond {horizon} tokens; "
        f"{fix} to learn robust forgetting."
    )


def _round_up_pow2(t: float) -> int:
    n = 1
    while n < t:
        n *= 2
    return n
