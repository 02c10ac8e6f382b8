"""`DataConfig`: the `data:` section of every recipe (an OmegaConf structured schema)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


@dataclass
class DataConfig:
    """Streaming RedPajama-V2 pipeline settings.

    Episodes are LongTensors [B, S, T+1]: B = `batch_size` rows per rank, S = `segments`,
    T = `train_length`; input = ep[..., :-1], labels = ep[..., 1:].
    """

    source: str = "data/sample"  # local mirror folder or base URL in the RedPajama-V2 layout
    listing: Optional[str] = None  # a listings/*.txt name or a path; None = every listing of the source
    tokenizer: str = "data/sample/tokenizer.json"  # "bytes" | tokenizer.json path | hub name
    min_doc_tokens: int = 4096  # appendix F: shorter documents are dropped
    max_doc_bytes: int = 32 * 1024 * 1024  # larger documents are skipped as bad (memory guard)
    train_length: int = 4096  # T: tokens per segment
    segments: int = 12  # S: segments per episode (truncated BPTT)
    batch_size: int = 1  # B: rows per rank; every row is one continuous token stream
    num_workers: int = 0  # dataloader worker processes per rank
    dedup: bool = True  # drop listed duplicates and in-stream exact duplicates
    dedup_memory: int = 100_000  # content hashes remembered per row stream (FIFO)
    seed: int = 0
    shuffle_shards: bool = True  # shard order: a seeded permutation, a new one every epoch
    epochs: Optional[int] = None  # passes over the shards; None = cycle forever (epochs counted)
    tokenize_batch_bytes: int = 4 * 1024 * 1024  # text handed to one tokenizers batch call
    timeout_s: float = 60.0  # per network operation
    retries: int = 5  # attempts after the first, with back-off, before a shard is skipped
    retry_backoff_s: float = 1.0  # first back-off; doubles on every retry

    def __post_init__(self):
        checks = [
            ("min_doc_tokens", self.min_doc_tokens >= 1, ">= 1"),
            ("max_doc_bytes", self.max_doc_bytes >= 1, ">= 1"),
            ("train_length", self.train_length >= 1, ">= 1"),
            ("segments", self.segments >= 1, ">= 1"),
            ("batch_size", self.batch_size >= 1, ">= 1"),
            ("num_workers", self.num_workers >= 0, ">= 0"),
            ("dedup_memory", self.dedup_memory >= 0, ">= 0"),
            ("epochs", self.epochs is None or self.epochs >= 1, ">= 1 or null"),
            ("tokenize_batch_bytes", self.tokenize_batch_bytes >= 1, ">= 1"),
            ("timeout_s", self.timeout_s > 0, "> 0"),
            ("retries", self.retries >= 0, ">= 0"),
            ("retry_backoff_s", self.retry_backoff_s >= 0, ">= 0"),
        ]
        for name, ok, rule in checks:
            if not ok:
                raise ValueError(f"data.{name} must be {rule}, got {getattr(self, name)!r}")
        if not self.source:
            raise ValueError("data.source must name a local mirror folder or a URL, got ''")
        if not self.tokenizer:
            raise ValueError("data.tokenizer must be 'bytes', a tokenizer.json path or a hub name, got ''")

    @property
    def episode_tokens(self) -> int:
        """Tokens of one row of one episode, S*T + 1 (the last label)."""
        return self.segments * self.train_length + 1
