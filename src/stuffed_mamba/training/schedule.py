"""The warmup-stable-decay (WSD) learning-rate schedule of appendix F.1 (Hu et al., 2024).

A pure function of the optimiser step: resuming, splitting a job or changing
`trainer.max_steps` never changes the LR at a given step. The schedule's length
(`total_steps`) comes from the recipe (`optim.total_steps`), never from the
trainer, whose `max_steps` may stop a job anywhere inside it.
"""

from __future__ import annotations

import math

DECAY_SHAPES = ("linear", "exponential", "1-sqrt")


def wsd_lambda(
    step: int,
    *,
    warmup_steps: int,
    total_steps: int,
    decay_fraction: float = 0.1,
    decay: str = "linear",
    min_lr_ratio: float = 0.0,
) -> float:
    """LR multiplier at optimiser step `step` (0-based: the step about to be taken).

    warm-up   step <  W:            (step + 1) / W                   linear from 1/W to 1
    stable    W <= step < D0:       1
    decay     D0 <= step < total:   1 - (1 - m) * f(p),  p = (step - D0 + 1) / (total - D0)
    after     step >= total:        m

    with D0 = total - round(decay_fraction * total), m = min_lr_ratio and f the decay
    shape: linear f(p) = p; "1-sqrt" f(p) = sqrt(p) (Hagele et al., 2024); "exponential"
    decays geometrically from 1 to m (to 1e-3 when m = 0: exp cannot reach zero).
    The last decay step (step = total - 1) reaches m exactly.
    """
    if decay not in DECAY_SHAPES:
        raise ValueError(f"decay must be one of {DECAY_SHAPES}, got {decay!r}")
    if total_steps <= 0 or warmup_steps < 0 or not 0.0 <= decay_fraction <= 1.0 or not 0.0 <= min_lr_ratio <= 1.0:
        raise ValueError(
            f"bad WSD arguments: warmup_steps={warmup_steps} total_steps={total_steps} "
            f"decay_fraction={decay_fraction} min_lr_ratio={min_lr_ratio}"
        )
    if step >= total_steps:
        return min_lr_ratio
    decay_steps = round(decay_fraction * total_steps)
    decay_start = total_steps - decay_steps
    if step < warmup_steps:
        # Warm-up can overlap the decay in tiny runs; the smaller multiplier wins.
        warm = (step + 1) / warmup_steps
    else:
        warm = 1.0
    if step < decay_start:
        return warm
    p = (step - decay_start + 1) / decay_steps  # in (0, 1]
    if decay == "linear":
        mult = 1.0 - (1.0 - min_lr_ratio) * p
    elif decay == "1-sqrt":
        mult = 1.0 - (1.0 - min_lr_ratio) * math.sqrt(p)
    else:
        floor = min_lr_ratio if min_lr_ratio > 0 else 1e-3
        mult = floor**p
        if p >= 1.0:
            mult = min_lr_ratio
    return min(warm, mult)
