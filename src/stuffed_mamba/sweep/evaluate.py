"""Evaluate one sweep cell's checkpoint with every probe the sweep's `eval:` section enables.

Each probe of the registry runs with its own config (its defaults, or the sweep's values);
its scalars become the row's `<probe>/<scalar>` columns (e.g. `position_loss/learned_to_forget`,
section 4.2, and `passkey/T_recall`, section 4.3) and its summary is saved beside the run.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from stuffed_mamba.sweep.recipe import Cell


def evaluate_checkpoint(ckpt: Path, base: Path, cell: Cell, cfg) -> tuple[dict[str, Any], dict[str, dict]]:
    """(scalars for the results row, {probe: summary})."""
    import torch

    from stuffed_mamba.data import load_eval_sequences, load_tokenizer
    from stuffed_mamba.model.io import load_checkpoint
    from stuffed_mamba.probes.registry import Context, all_probes
    from stuffed_mamba.sweep.recipe import resolved_config

    recipe = resolved_config(base, cell.overrides)
    model = load_checkpoint(ckpt).model
    tokenizer = load_tokenizer(recipe.data.tokenizer)
    source = cfg.source or recipe.data  # the whole data section: an hf:// source needs its hf_* keys

    def eval_text(length: int, n: int, min_doc_tokens: int):
        return torch.as_tensor(
            load_eval_sequences(source, tokenizer, n=n, length=length, min_doc_tokens=min_doc_tokens), dtype=torch.long
        )

    ctx = Context(tokenizer=tokenizer, train_length=cell.train_length, eval_text=eval_text)
    row: dict[str, Any] = {"state_size_model": int(model.config.state_size)}
    summaries: dict[str, dict] = {}
    with torch.no_grad():
        for probe in all_probes():
            pcfg = getattr(cfg, probe.name)
            if not pcfg.enabled:
                continue
            t0 = time.perf_counter()
            result = probe.run(model, probe.inputs(pcfg, ctx), pcfg, None)
            summaries[probe.name] = probe.summary(result, pcfg, ctx)
            row.update({f"{probe.name}/{k}": v for k, v in probe.scalars(summaries[probe.name]).items()})
            row[f"{probe.name}/seconds"] = round(time.perf_counter() - t0, 1)
    return row, summaries
