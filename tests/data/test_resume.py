"""Acceptance 4: a pipeline restored from a state continues exactly like an uninterrupted one."""

import io
import itertools

import pytest
import torch

from stuffed_mamba.data import DataConfig, build_dataloader


def _cfg(corpus, **kw):
    base = dict(source=str(corpus), tokenizer="bytes", min_doc_tokens=300, train_length=64, segments=3,
                batch_size=2, seed=3, tokenize_batch_bytes=2000)  # fmt: skip
    return DataConfig(**{**base, **kw})


def _roundtrip(state):
    """Through torch.save / torch.load(weights_only=True), as in a Lightning checkpoint."""
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


@pytest.mark.parametrize("workers,k", [(0, 7), (2, 5)])
def test_resume_continues_exactly(corpus, workers, k):
    cfg = _cfg(corpus, num_workers=workers)
    n = 170  # past an epoch boundary of both row streams (~130 rows per pass)
    ref_loader = build_dataloader(cfg)
    ref = list(itertools.islice(ref_loader, n))
    first = build_dataloader(cfg)
    it = iter(first)
    head = [next(it) for _ in range(k)]
    state = _roundtrip(first.state_dict())
    c_k = first.counters()
    del it, first
    resumed = build_dataloader(cfg)
    resumed.load_state_dict(state)
    tail = list(itertools.islice(resumed, n - k))
    assert all(torch.equal(a, b) for a, b in zip(head + tail, ref)) and len(head + tail) == n
    assert resumed.counters() == ref_loader.counters()
    assert ref_loader.counters()["epochs"] >= 1
    assert c_k["read"] <= ref_loader.counters()["read"]


def test_resume_with_another_layout_is_a_clear_error(corpus):
    first = build_dataloader(_cfg(corpus))
    next(iter(first))
    other = build_dataloader(_cfg(corpus, batch_size=1))
    other.load_state_dict(first.state_dict())
    with pytest.raises(ValueError, match="same data layout"):
        next(iter(other))
