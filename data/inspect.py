"""`stuffed-mamba data inspect`: the stream, dedup and filter stages over a source, counted."""

from __future__ import annotations

from . import counters as ctr
from .config import DataConfig
from .documents import open_documents
from .progress import Progress
from .stream import DocumentStream
from .tokenizer import load_tokenizer


def inspect_source(
    source: str,
    *,
    listing: str | None = None,
    tokenizer: str = "data/sample/tokenizer.json",
    min_doc_tokens: int = 4096,
    dedup: bool = True,
    dedup_memory: int = 1_000_000,
    max_doc_bytes: int = 32 * 1024 * 1024,
    timeout_s: float = 60.0,
    retries: int = 5,
    on_kept=None,
    progress: Progress | None = None,
    on_empty=None,
    **hf,
) -> dict[str, int]:
    """One pass over the shards in listing order (a single stream: dedup spans all shards);
    calls on_kept(doc_id) for every kept document in stream order, and on_empty(line) with a
    one-line verdict (what was found, what to do) when none was kept; returns the counters.
    `hf`: hf_data_files, hf_config, hf_split, hf_reshard, hf_rows_per_shard, text_field."""
    cfg = DataConfig(source=source, listing=listing, tokenizer=tokenizer, min_doc_tokens=min_doc_tokens,
                     max_doc_bytes=max_doc_bytes, dedup=dedup, timeout_s=timeout_s, retries=retries, **hf)  # fmt: skip
    reader, shards = open_documents(cfg)
    stream = DocumentStream(
        reader,
        shards,
        load_tokenizer(tokenizer),
        min_doc_tokens=min_doc_tokens,
        dedup=dedup,
        dedup_memory=dedup_memory,
        tokenize_batch_bytes=4 << 20,
        epochs=1,
        name=str(source),
    )
    for doc_id, _ in stream:
        if on_kept is not None:
            on_kept(doc_id)
        if progress is not None:
            c = stream.counters
            progress.update(documents=c["read"], kept=c["kept"], tokens=c["tokens"])
    if cfg.is_hf:
        from .hf import no_text_field

        if no_text_field(stream.counters):
            raise ValueError(f"{source}: none of the {stream.counters['read']} rows has text in a field "
                             f"{cfg.text_field!r} (set the text field)")  # fmt: skip
    if on_empty is not None and stream.counters["kept"] == 0:
        from .check import nothing_kept

        on_empty(nothing_kept(cfg, reader, stream.counters, len(shards)))
    return ctr.summary(stream.counters)
