"""Which reader a `data.source` names, and its shards: RedPajama-V2 (a folder or URL) or hf://."""

from __future__ import annotations


def open_documents(cfg):
    """(reader, shard names) for a DataConfig; a wrong source fails here, in one line."""
    if cfg.is_hf:
        from .hf import HFReader  # imports datasets: only for hf:// sources

        reader = HFReader(cfg)
        return reader, list(reader.names)
    from .reader import RPv2Reader
    from .source import open_source, read_shard_tags

    source = open_source(cfg.source, timeout_s=cfg.timeout_s, retries=cfg.retries, backoff_s=cfg.retry_backoff_s)
    reader = RPv2Reader(source, max_doc_bytes=cfg.max_doc_bytes, listed_dedup=cfg.dedup)
    return reader, read_shard_tags(source, cfg.listing)
