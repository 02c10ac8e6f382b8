"""`DataConfig`: the `data:` section of every recipe (an OmegaConf structured schema)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

HF_PREFIX = "hf://"


@dataclass
class DataConfig:
    """Streaming pipeline settings: a RedPajama-V2 source, or any `datasets` corpus (`hf://`).

    Episodes are LongTensors [B, S, T+1]: B = `batch_size` rows per rank, S = `segments`,
    T = `train_length`; input = ep[..., :-1], labels = ep[..., 1:].
    """

    source: str = "data/sample"  # RedPajama-V2 layout: local mirror folder or base URL; or hf://NAME
    listing: str | None = None  # a listings/*.txt name or a path; None = every listing of the source
    # hf:// sources (docs/data.md): a hub dataset hf://OWNER/NAME, or a `datasets` file builder
    # (hf://parquet, hf://json, hf://text) reading hf_data_files, streamed with datasets.load_dataset
    hf_data_files: Any | None = None  # a glob or a list of globs (local paths, URLs, hf://datasets/...)
    hf_config: str | None = None  # the dataset's configuration (load_dataset's `name`)
    hf_split: str = "train"
    hf_reshard: bool = False  # parquet: one shard per row group instead of per file (more row streams)
    # parquet: split every shard (file, or row group with hf_reshard) into shards of this many
    # consecutive rows, so that one file can feed many row streams; None = no split
    hf_rows_per_shard: int | None = None
    text_field: str = "text"  # the column holding the document (hf:// only; RedPajama-V2 reads raw_content)
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
    epochs: int | None = None  # passes over the shards; None = cycle forever (epochs counted)
    tokenize_batch_bytes: int = 4 * 1024 * 1024  # text handed to one tokenizers batch call
    timeout_s: float = 60.0  # per network operation
    retries: int = 5  # attempts after the first, with back-off, before a shard is skipped
    retry_backoff_s: float = 1.0  # first back-off; doubles on every retry
    # fit's start-up check reads every row stream up to its first kept document (check.py), for at
    # most this long (a remote source may take longer: what is unread then is not checked); 0 = off
    check_time_s: float = 20.0
    # SYNTHETIC training data (data/synthetic.py, docs/data.md): appendix-B.1 passkey documents, each
    # followed by its answer, mixed into every row stream as this fraction of the training tokens
    synthetic_passkey_fraction: float = 0.0  # 0 = off; in [0, 1)
    synthetic_passkey_lengths: list[int] | None = None  # document lengths in tokens; None = [train_length]
    synthetic_passkey_seed: int = 1  # the documents' own generator (never the passkey probe's)

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
            ("check_time_s", self.check_time_s >= 0, ">= 0"),
            ("hf_rows_per_shard", self.hf_rows_per_shard is None or self.hf_rows_per_shard >= 1, ">= 1 or null"),
        ]
        for name, ok, rule in checks:
            if not ok:
                raise ValueError(f"data.{name} must be {rule}, got {getattr(self, name)!r}")
        if not 0.0 <= self.synthetic_passkey_fraction < 1.0:
            raise ValueError(
                f"data.synthetic_passkey_fraction must be in [0, 1), got {self.synthetic_passkey_fraction!r}"
            )
        lengths = self.synthetic_passkey_lengths
        if lengths is not None and (not lengths or not all(int(n) >= 1 for n in lengths)):
            raise ValueError(
                f"data.synthetic_passkey_lengths must be a non-empty list of token counts >= 1, got {lengths!r}"
            )
        if not self.source:
            raise ValueError("data.source must name a local mirror folder or a URL, got ''")
        if self.source.startswith(HF_PREFIX):
            if self.listing is not None:
                raise ValueError("data.listing is for RedPajama-V2 sources; an hf:// source reads data.hf_data_files")
            files = self.hf_data_files
            files = [files] if isinstance(files, str) else files
            if files is not None and (not files or not all(isinstance(f, str) and f for f in files)):
                raise ValueError(f"data.hf_data_files must be a glob or a list of globs, got {self.hf_data_files!r}")
            if not self.text_field or not self.hf_split:
                raise ValueError("data.text_field and data.hf_split must not be empty")
        else:
            hf = {
                "hf_data_files": None,
                "hf_config": None,
                "hf_split": "train",
                "hf_reshard": False,
                "hf_rows_per_shard": None,
                "text_field": "text",
            }
            for k, default in hf.items():
                if getattr(self, k) != default:
                    raise ValueError(f"data.{k} applies to hf:// sources only (data.source is {self.source!r})")
        if not self.tokenizer:
            raise ValueError("data.tokenizer must be 'bytes', a tokenizer.json path or a hub name, got ''")

    @property
    def episode_tokens(self) -> int:
        """Tokens of one row of one episode, S*T + 1 (the last label)."""
        return self.segments * self.train_length + 1

    @property
    def passkey_lengths(self) -> list[int]:
        """Lengths of the synthetic passkey documents (tokens, answer included)."""
        return [int(n) for n in self.synthetic_passkey_lengths or [self.train_length]]

    @property
    def is_hf(self) -> bool:
        return self.source.startswith(HF_PREFIX)
