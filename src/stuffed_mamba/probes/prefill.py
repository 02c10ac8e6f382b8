"""Chunked prefill: run a long context through the model carrying the state, without the LM head.

The probes that only need the state (passkey before the answer, retention, state
statistics) use `Mamba2LM.advance`, which skips `norm_f` and `lm_head`: no [B, chunk, V]
logits, and peak memory is that of one chunk whatever the context length; tests check that
the state equals `model(...).state`.

Under jemalloc with purging off (how `stuffed-mamba` runs, `allocator.py`) freed pages stay
resident: before the first chunk those of whatever came before (the tokenization of a 256K-token
prompt: ~170 MB), and in a thread's arena what another thread freed. So the prefill hands them back
before each chunk and at the end (`allocator.purge`; a no-op under another malloc), and its peak
RSS stays that of one chunk (`benchmarks/passkey_memory.py --command`).
"""

from __future__ import annotations

import torch

from stuffed_mamba.allocator import purge
from stuffed_mamba.model import ModelState


@torch.no_grad()
def prefill(model, input_ids: torch.Tensor, state: ModelState | None = None, *, chunk_size: int = 4096):
    """input_ids [B, T] -> the ModelState after position T (state=None: from zeros)."""
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    for s in range(0, input_ids.shape[1], chunk_size):
        purge()
        state = model.advance(input_ids[:, s : s + chunk_size], state)
    purge()
    return state
