"""Evaluate one sweep cell's checkpoint: position loss -> learned_to_forget (section 4.2), passkey -> T_recall (4.3)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from stuffed_mamba.sweep.recipe import Cell, EvalConfig, base_value


def eval_length(cfg: EvalConfig, train_length: int) -> int:
    """Tokens per evaluation sequence: the configured length, but at least min_multiple x T_train."""
    pl = cfg.position_loss
    return int(max(pl.length, round(pl.min_multiple * train_length)))


def passkey_lengths(cfg: EvalConfig, train_length: int) -> list[int]:
    pk = cfg.passkey
    if pk.lengths:
        return sorted({int(t) for t in pk.lengths})
    return sorted({max(64, int(round(m * train_length))) for m in pk.multiples})


def evaluate_checkpoint(ckpt: Path, base: Path, cell: Cell, cfg: EvalConfig) -> dict[str, Any]:
    """Scalars for the results row, plus `curve` (the bucketed loss-vs-position curve, saved beside it)."""
    import torch

    from stuffed_mamba.data import load_eval_sequences, load_tokenizer
    from stuffed_mamba.probes.checkpoint import load_model
    from stuffed_mamba.probes.position_loss import loss_per_position, loss_summary

    torch.manual_seed(cfg.seed)
    model = load_model(ckpt)
    model.eval()
    T_train = cell.train_length
    source = cfg.position_loss.source or base_value(base, "data.source", cell.overrides)
    tok_spec = base_value(base, "data.tokenizer", cell.overrides)
    tokenizer = load_tokenizer(tok_spec)
    n_ctx = eval_length(cfg, T_train)

    t0 = time.perf_counter()
    ids = load_eval_sequences(source, tokenizer, n=cfg.position_loss.sequences, length=n_ctx + 1,
                              min_doc_tokens=cfg.position_loss.min_doc_tokens)
    ids = torch.as_tensor(ids, dtype=torch.long)
    loss = loss_per_position(model, ids, chunk_size=cfg.position_loss.chunk_size)  # [n_ctx]
    s = loss_summary(loss, T_train)
    # a softer view than the 2x criterion: how much the loss rose from just before T_train
    # to the end of the evaluation context (mean over the last quarter of the positions)
    near = loss[max(0, T_train // 2): T_train].mean().item()
    late = loss[-max(1, loss.numel() // 4):].mean().item()
    out: dict[str, Any] = {
        "eval_length": int(loss.numel()),
        "eval_sequences": int(ids.shape[0]),
        "max_loss_within": s["max_within"],
        "mean_loss_within": s["mean_within"],
        "max_loss_beyond": s["max_beyond"],
        "mean_loss_beyond": s["mean_beyond"],
        "loss_ratio": s["beyond_over_within"],
        "learned_to_forget": bool(s["learned_to_forget"]),
        "loss_near_train_length": near,
        "loss_late": late,
        "late_loss_rise": late - near,
        "loss_eval_seconds": round(time.perf_counter() - t0, 1),
        "curve": {"train_length": T_train, "positions": s["bucket_positions"], "loss": s["bucket_loss"],
                  "learned_to_forget": bool(s["learned_to_forget"])},
    }
    cfg_model = getattr(model, "config", None)
    if cfg_model is not None and getattr(cfg_model, "state_size", None) is not None:
        out["state_size_model"] = int(cfg_model.state_size)
    if cfg.passkey.enabled:
        from stuffed_mamba.probes.passkey import evaluate_passkey

        t0 = time.perf_counter()
        lengths = passkey_lengths(cfg, T_train)
        res = evaluate_passkey(model, tokenizer, lengths, samples=cfg.passkey.samples,
                               prefill_chunk=cfg.position_loss.chunk_size,
                               generator=torch.Generator().manual_seed(cfg.seed))
        # section 4.3: the longest length with >= 95% accuracy; None (not 0) when no length reached it
        t_recall = res.t_recall(0.95)
        out.update({
            "t_recall": int(t_recall) if t_recall else None,
            "passkey_lengths": lengths,
            "passkey_accuracy": {str(k): v for k, v in res.accuracy_by_length().items()},
            "passkey_seconds": round(time.perf_counter() - t0, 1),
        })
    return out

