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


def forget_threshold_warning(model_cfg: Any, train_length: int) -> str | None:
    """A one-paragraph warning when `train_length` < the paper's predicted T_forget, else None.

    Called by `stuffed-mamba fit` at start-up with the recipe's model section and
    `data.train_length` (the segment length T_train of truncated BPTT).
    """
    p = predicted_thresholds(model_cfg)
    if train_length >= p["t_forget"]:
        return None
    return (
        f"train_length {train_length} is below the forgetting threshold predicted for this state size: "
        f"N_S = {p['state_size'] / 1e6:.2f}M floats gives T_forget = 5.172*N_S - 4.469 "
        f"= {p['t_forget'] / 1e3:.1f}K tokens (paper, section 5.2). Trained this short, Mamba-2 "
        f"tends not to learn to forget, and its loss can blow up beyond {train_length} tokens; "
        f"use train_length >= {_round_up_pow2(p['t_forget'])} to learn robust forgetting."
    )


def _round_up_pow2(t: float) -> int:
    n = 1
    while n < t:
        n *= 2
    return n
