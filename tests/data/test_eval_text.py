"""Evaluation text: documents of >= min_doc_tokens tokens, EOS-concatenated when one is too short."""

import numpy as np
import pytest
from stuffed_mamba.data import load_eval_sequences

from .mirror import MIN_TOKENS


def test_eval_sequences_start_at_documents_and_concatenate_with_eos(mirror):
    L = 9000
    seqs = load_eval_sequences(str(mirror.root), "bytes", length=L, n=2, min_doc_tokens=MIN_TOKENS,
                               listing=mirror.listing, max_doc_bytes=20_000)  # fmt: skip
    assert seqs.shape == (2, L) and seqs.dtype.is_floating_point is False
    docs = [np.frombuffer(t.encode(), np.uint8).astype(np.int64) for t in mirror.kept_texts]
    # documents 0,1 (5000 + 4096 tokens) fill the first sequence; 2,3 (4100 + 6000) the second
    ref0 = np.concatenate([docs[0], [256], docs[1]])[:L]
    ref1 = np.concatenate([docs[2], [256], docs[3]])[:L]
    np.testing.assert_array_equal(seqs[0].numpy(), ref0)
    np.testing.assert_array_equal(seqs[1].numpy(), ref1)
    again = load_eval_sequences(str(mirror.root), "bytes", length=L, n=2, min_doc_tokens=MIN_TOKENS,
                                listing=mirror.listing, max_doc_bytes=20_000)  # fmt: skip
    assert (again == seqs).all()


def test_too_few_documents_is_a_clear_error(mirror):
    with pytest.raises(ValueError, match="only 0 evaluation sequence"):
        load_eval_sequences(str(mirror.root), "bytes", length=100, n=1, min_doc_tokens=10**6,
                            listing=mirror.listing)  # fmt: skip


def test_sample_has_evaluation_text_of_16k_token_documents():
    seqs = load_eval_sequences("data/sample", "data/sample/tokenizer.json", length=16384, n=8)
    assert seqs.shape == (8, 16384)
    assert len({tuple(s[:64].tolist()) for s in seqs}) == 8  # eight different documents
