"""Acceptance 1: exactly the right documents, in stream order, and counters that say why."""

import numpy as np
import pytest
from stuffed_mamba.data import DataConfig, build_dataloader
from stuffed_mamba.data.inspect import inspect_source
from stuffed_mamba.data.packer import Packer
from stuffed_mamba.data.reader import TOO_LONG, gzip_lines

from .mirror import MAX_DOC_BYTES, MIN_TOKENS


def _stream_tokens(texts):
    """The reference token stream: UTF-8 bytes of each kept document, then EOS (256)."""
    return np.concatenate([np.append(np.frombuffer(t.encode(), np.uint8).astype(np.int64), 256) for t in texts])


def test_inspect_keeps_exactly_the_right_documents_in_order(mirror):
    ids = []
    counts = inspect_source(
        str(mirror.root), listing=mirror.listing, tokenizer="bytes",
        min_doc_tokens=MIN_TOKENS, max_doc_bytes=MAX_DOC_BYTES, on_kept=ids.append,
    )  # fmt: skip
    assert ids == mirror.kept_ids
    assert counts == mirror.counters
    dropped = sum(counts[k] for k in counts if k.startswith(("dropped_", "bad_")) and k != "dropped_duplicate")
    assert counts["read"] == counts["kept"] + dropped  # every line read has exactly one outcome


def test_loader_packs_the_kept_documents_into_one_continuous_stream(mirror):
    T, S = 1000, 3
    cfg = DataConfig(
        source=str(mirror.root), listing=mirror.listing, tokenizer="bytes", min_doc_tokens=MIN_TOKENS,
        max_doc_bytes=MAX_DOC_BYTES, train_length=T, segments=S, batch_size=1, shuffle_shards=False, epochs=1,
    )  # fmt: skip
    loader = build_dataloader(cfg)
    eps = list(loader)
    ref = _stream_tokens(mirror.kept_texts)
    assert len(eps) == (len(ref) - 1) // (S * T) and len(eps) >= 10
    for e, ep in enumerate(eps):
        assert ep.shape == (1, S, T + 1) and ep.dtype.is_floating_point is False
        for s in range(S):  # segment s covers stream tokens [e*S*T + s*T, ... + T]
            start = e * S * T + s * T
            np.testing.assert_array_equal(ep[0, s].numpy(), ref[start : start + T + 1])
    c = loader.counters()
    assert c == mirror.counters


def test_gzip_lines_drops_over_long_lines_and_keeps_the_rest():
    import gzip

    raw = gzip.compress(b"a" * 10 + b"\n" + b"b" * 100 + b"\n" + b"c" * 5 + b"\n" + b"d" * 60)
    import io

    lines = list(gzip_lines(io.BytesIO(raw), max_line_bytes=50))
    assert lines == [b"a" * 10, TOO_LONG, b"c" * 5, TOO_LONG]


def test_packer_rows_overlap_by_exactly_one_token():
    p = Packer(eos_id=-1, row_tokens=7)
    for n in (3, 4, 9):
        p.push(np.arange(100 * n, 100 * n + n, dtype=np.int32))
    stream = np.array([300, 301, 302, -1, 400, 401, 402, 403, -1] + list(range(900, 909)) + [-1])
    rows = []
    while (r := p.pop_row()) is not None:
        rows.append(r)
    assert len(rows) == 3  # 19 tokens: rows start at 0, 6, 12
    for i, r in enumerate(rows):
        np.testing.assert_array_equal(r, stream[6 * i : 6 * i + 7])
    assert len(p) == 1  # the last label waits to become the next first input


@pytest.mark.parametrize("field,value", [("segments", 0), ("train_length", -1), ("timeout_s", 0.0), ("epochs", 0)])
def test_config_errors_name_the_field(field, value):
    with pytest.raises(ValueError, match=rf"^data\.{field} must be"):
        DataConfig(**{field: value})


def test_a_row_stream_that_keeps_nothing_is_an_error_not_a_hang(corpus):
    from stuffed_mamba.data.stream import EmptyStream

    cfg = DataConfig(source=str(corpus), tokenizer="bytes", min_doc_tokens=10**6, train_length=8, segments=2)
    with pytest.raises(EmptyStream, match="no document passed in a whole pass"):
        next(iter(build_dataloader(cfg)))
