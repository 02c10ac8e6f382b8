"""Acceptance 4: a pipeline restored from a state continues exactly like an uninterrupted one."""

import pytest
from stuffed_mamba.data import DataConfig, build_dataloader

from tests.data.loaders import same_episodes, stop_and_resume


def _cfg(corpus, **kw):
    base = dict(source=str(corpus), tokenizer="bytes", min_doc_tokens=300, train_length=64, segments=3,
                batch_size=2, seed=3, tokenize_batch_bytes=2000)  # fmt: skip
    return DataConfig(**{**base, **kw})


@pytest.mark.parametrize("workers,k", [(0, 7), (2, 5)])
def test_resume_continues_exactly(corpus, workers, k):
    cfg = _cfg(corpus, num_workers=workers)
    r = stop_and_resume(cfg, n=170, k=k)  # 170: past an epoch boundary of both row streams (~130 rows per pass)
    assert same_episodes(r.episodes, r.reference)
    assert r.loader.counters() == r.reference_loader.counters()
    assert r.reference_loader.counters()["epochs"] >= 1
    assert r.counters_at_stop["read"] <= r.reference_loader.counters()["read"]


def test_resume_with_another_layout_is_a_clear_error(corpus):
    first = build_dataloader(_cfg(corpus))
    next(iter(first))
    other = build_dataloader(_cfg(corpus, batch_size=1))
    other.load_state_dict(first.state_dict())
    with pytest.raises(ValueError, match="same data layout"):
        next(iter(other))
