"""Lightning callbacks that run the forgetting probes during training (DESIGN section 6).

`build_callbacks(recipe.probes, tokenizer=..., data_cfg=recipe.data, run_dir=recipe.run.dir)`
turns the recipe's `probes:` section into one callback per enabled probe of the registry
(`stuffed_mamba.probes.registry`) plus the "forgetting" dashboard layout; add them to the
`Trainer`. Each callback expects `pl_module.model` to be the `Mamba2LM`. Also here: the training
progress bar (`StepProgressBar`). This package is the Lightning layer: importing it imports Lightning.
"""

from __future__ import annotations

from typing import Any

from stuffed_mamba.probes.registry import Context, ProbesConfig, all_probes, as_probes_config

from .base import ProbeCallback
from .dashboard import ForgettingDashboard
from .probe import (
    PasskeyCallback,
    PositionLossCallback,
    RegistryProbeCallback,
    RetentionCallback,
    StateStatsCallback,
    callback_for,
)
from .progress import StepProgressBar

__all__ = [
    "ProbesConfig",
    "build_callbacks",
    "ProbeCallback",
    "PasskeyCallback",
    "RetentionCallback",
    "StateStatsCallback",
    "PositionLossCallback",
    "RegistryProbeCallback",
    "ForgettingDashboard",
    "StepProgressBar",
]


def build_callbacks(probes_cfg: Any, *, tokenizer, data_cfg, run_dir: str | None = None) -> list:
    """The probe callbacks (plus the "forgetting" dashboard layout) a recipe asks for.

    probes_cfg: the recipe's `probes` section (ProbesConfig, DictConfig or dict).
    tokenizer: from `stuffed_mamba.data.load_tokenizer`.
    data_cfg: the recipe's `data` section: `train_length` (T_train), and `source` and
        `listing` for the evaluation text (read lazily, on rank 0, at the first probe).
    """
    cfg = as_probes_config(probes_cfg)
    if not cfg.enabled:
        return []
    ctx = Context(
        tokenizer=tokenizer, train_length=int(data_cfg.train_length), eval_text=_eval_text(data_cfg, tokenizer)
    )
    run_dir = str(run_dir) if run_dir is not None else None
    probes = [
        callback_for(p, getattr(cfg, p.name), ctx, run_dir=run_dir)
        for p in all_probes()
        if getattr(cfg, p.name).enabled
    ]
    return probes + [ForgettingDashboard(probes)] if probes else []


def _eval_text(data_cfg, tokenizer):
    """A loader of evaluation token ids [n, length] (appendix F: long documents, concatenated)."""

    def load(length: int, n: int, min_doc_tokens: int):
        from stuffed_mamba.data import load_eval_sequences

        # the whole data section: an hf:// source needs its hf_* keys too
        return load_eval_sequences(data_cfg, tokenizer, length=length, n=n, min_doc_tokens=min_doc_tokens)

    return load
