"""Evaluation text (appendix F): documents of at least 16K tokens, concatenated with EOS when
one is shorter than the evaluation context."""

from __future__ import annotations

import numpy as np
import torch

from .config import DataConfig
from .documents import open_documents
from .stream import DocumentStream
from .tokenizer import load_tokenizer


def load_eval_sequences(
    source: str,
    tokenizer,
    *,
    length: int,
    n: int,
    min_doc_tokens: int = 16384,
    listing: str | None = None,
    max_doc_bytes: int = 32 * 1024 * 1024,
    **hf,
) -> torch.Tensor:
    """LongTensor [n, length]: sequence i starts at the start of a fresh document (stream order:
    listing order, deduplicated); a document shorter than `length` is followed by EOS and the
    next one. Deterministic. Raises ValueError when the source has too few such documents.

    `source`: a data.source string (with `listing`, or hf_data_files / hf_config / hf_split /
    text_field for an hf:// source), or a recipe's DataConfig (its source and those keys)."""
    if length < 1 or n < 1:
        raise ValueError(f"length and n must be >= 1, got length={length}, n={n}")
    tok = load_tokenizer(tokenizer) if isinstance(tokenizer, str) else tokenizer
    if isinstance(source, DataConfig):
        cfg = source
    else:
        cfg = DataConfig(source=source, listing=listing, max_doc_bytes=max_doc_bytes, **hf)
    reader, shards = open_documents(cfg)
    stream = DocumentStream(
        reader,
        shards,
        tok,
        min_doc_tokens=min_doc_tokens,
        dedup=True,
        dedup_memory=1_000_000,
        tokenize_batch_bytes=4 << 20,
        epochs=1,
        name="evaluation text",
    )
    eos = np.array([tok.eos_id], dtype=np.int32)
    seqs, parts, have = [], [], 0
    for _, tokens in stream:
        if parts:
            parts.append(eos)
            have += 1
        parts.append(tokens)
        have += len(tokens)
        if have >= length:
            seqs.append(np.concatenate(parts)[:length])
            parts, have = [], 0
            if len(seqs) == n:
                return torch.from_numpy(np.stack(seqs)).long()
    raise ValueError(
        f"{cfg.source}: only {len(seqs)} evaluation sequence(s) of {length} tokens from documents of "
        f">= {min_doc_tokens} tokens, {n} asked"
    )
