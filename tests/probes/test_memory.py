"""Acceptance 4 (small case): the passkey prefill's peak memory does not grow with the context."""

import torch

from stuffed_mamba.probes.memory import TensorPeak
from stuffed_mamba.probes.passkey import build_prompt, greedy_continuation

from .conftest import make_tiny_lm


def test_tensor_peak_counts_live_storage_once():
    x = torch.ones(1000)  # from before: not counted, nor its views
    with TensorPeak() as m:
        a = torch.empty(256, dtype=torch.float32)  # 1 KiB
        v = a.view(16, 16)  # same storage
        b = x * 2  # 4000 B
        x.view(10, 100)
        del a, v, b
        c = torch.zeros(100, dtype=torch.float64)  # 800 B after the others are gone
    assert m.peak_bytes == 1024 + 4000
    del c
    assert m.live_bytes == 0


def _peak(model, tok, T, **kw):
    ids = torch.tensor(build_prompt(tok, T, 0.5, "12345"))
    with TensorPeak() as m:
        greedy_continuation(model, ids, max_new_tokens=2, **kw)
    return m.peak_bytes


def test_passkey_prefill_peak_is_flat_in_context_length(byte_tok):
    model = make_tiny_lm(chunk_size=32)
    small = _peak(model, byte_tok, 1024, prefill_chunk=256)
    large = _peak(model, byte_tok, 4096, prefill_chunk=256)
    assert large <= 1.2 * small, (small, large)
    # the measurement has teeth: without chunking the peak grows with the context
    whole = _peak(model, byte_tok, 4096, prefill_chunk=4096)
    assert whole > 2.5 * small, (small, whole)
