"""Lightning callbacks that run the forgetting probes during training (DESIGN section 6).

`build_callbacks(recipe.probes, tokenizer=..., data_cfg=recipe.data, run_dir=recipe.run.dir)`
turns the recipe's `probes:` section into callbacks; add them to the `Trainer`. Each
callback wraps one pure probe of `stuffed_mamba.probes` and expects `pl_module.model`
to be the `Mamba2LM`.
"""

from __future__ import annotations

from typing import Any, Optional

from .config import (
    PasskeyProbeConfig,
    PositionLossProbeConfig,
    ProbesConfig,
    RetentionProbeConfig,
    StateStatsProbeConfig,
)

__all__ = [
    "ProbesConfig",
    "PasskeyProbeConfig",
    "RetentionProbeConfig",
    "StateStatsProbeConfig",
    "PositionLossProbeConfig",
    "build_callbacks",
    "PasskeyCallback",
    "RetentionCallback",
    "StateStatsCallback",
    "PositionLossCallback",
    "ForgettingDashboard",
]

_LAZY = {
    "PasskeyCallback": ".passkey",
    "RetentionCallback": ".retention",
    "StateStatsCallback": ".states",
    "PositionLossCallback": ".position_loss",
    "ForgettingDashboard": ".dashboard",
    "ProbeCallback": ".base",
}


def __getattr__(name: str):
    # Lightning is imported only when a callback class is asked for: the config dataclasses
    # are imported by recipe validation, which should stay light
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def as_probes_config(cfg: Any) -> ProbesConfig:
    """A ProbesConfig from a ProbesConfig, an OmegaConf DictConfig or a plain dict (unknown keys are errors)."""
    if isinstance(cfg, ProbesConfig):
        return cfg
    from omegaconf import OmegaConf

    merged = OmegaConf.merge(OmegaConf.structured(ProbesConfig), cfg if cfg is not None else {})
    return OmegaConf.to_object(merged)


def default_lengths(train_length: int) -> list[int]:
    """Passkey lengths around T_train: T/2, T, 2T, 4T (at least 512 tokens, room for the prompt's text)."""
    return sorted({max(512, int(train_length * f)) for f in (0.5, 1, 2, 4)})


def build_callbacks(probes_cfg: Any, *, tokenizer, data_cfg, run_dir: Optional[str] = None) -> list:
    """The probe callbacks (plus the "forgetting" dashboard layout) a recipe asks for.

    probes_cfg: the recipe's `probes` section (ProbesConfig, DictConfig or dict).
    tokenizer: from `stuffed_mamba.data.load_tokenizer`.
    data_cfg: the recipe's `data` section: `train_length` (T_train), and `source` and
        `listing` for the evaluation text (read lazily, on rank 0, at the first probe).
    """
    from .dashboard import ForgettingDashboard
    from .passkey import PasskeyCallback
    from .position_loss import PositionLossCallback
    from .retention import RetentionCallback
    from .states import StateStatsCallback

    cfg = as_probes_config(probes_cfg)
    if not cfg.enabled:
        return []
    T_train = int(data_cfg.train_length)
    run_dir = str(run_dir) if run_dir is not None else None
    min_doc = cfg.position_loss.min_doc_tokens
    probes: list = []

    p = cfg.passkey
    if p.enabled:
        probes.append(PasskeyCallback(
            tokenizer, p.lengths or default_lengths(T_train), samples=p.samples, repeats=p.repeats,
            last_r=p.last_r, prefill_chunk=p.prefill_chunk, max_new_tokens=p.max_new_tokens, seed=p.seed,
            every_n_steps=p.every_n_steps, time_budget_s=p.time_budget_s, run_dir=run_dir,
        ))
    r = cfg.retention
    if r.enabled:
        probes.append(RetentionCallback(
            _eval_text(data_cfg, tokenizer, r.length or 4 * T_train, r.samples, min_doc), T_train,
            thresholds=r.thresholds, every_n_steps=r.every_n_steps, time_budget_s=r.time_budget_s, run_dir=run_dir,
        ))
    s = cfg.states
    if s.enabled:
        probes.append(StateStatsCallback(
            tokenizer, T_train, length=s.length or 4 * T_train, n_points=s.n_points, prefill_chunk=s.prefill_chunk,
            every_n_steps=s.every_n_steps, time_budget_s=s.time_budget_s, run_dir=run_dir,
        ))
    pl = cfg.position_loss
    if pl.enabled:
        probes.append(PositionLossCallback(
            _eval_text(data_cfg, tokenizer, pl.length or 4 * T_train, pl.samples, min_doc), T_train,
            buckets=pl.buckets, prefill_chunk=pl.prefill_chunk, every_n_steps=pl.every_n_steps,
            time_budget_s=pl.time_budget_s, run_dir=run_dir,
        ))
    return probes + [ForgettingDashboard(probes)] if probes else []


def _eval_text(data_cfg, tokenizer, length: int, n: int, min_doc_tokens: int):
    """A loader of evaluation token ids [n, length] (appendix F: documents >= 16K tokens, concatenated)."""

    def load():
        from stuffed_mamba.data import load_eval_sequences

        # the whole data section: an hf:// source needs its hf_* keys too
        return load_eval_sequences(data_cfg, tokenizer, length=length, n=n, min_doc_tokens=min_doc_tokens)

    return load
