"""Counters of what the pipeline read, kept and skipped, and why (logged during training)."""

from __future__ import annotations

# Every line of a shard is counted in `read` and ends in exactly one of: kept,
# dropped_duplicate_listed, dropped_duplicate_stream, dropped_short, dropped_empty, bad_*.
DOC_OUTCOMES = (
    "kept",
    "dropped_duplicate_listed",  # listed in the shard's duplicates parquet
    "dropped_duplicate_stream",  # same content hash seen earlier in this row stream
    "dropped_short",  # fewer than min_doc_tokens tokens (or UTF-8 bytes: checked first)
    "dropped_empty",  # raw_content is ""
    "bad_json",  # the line is not a JSON object
    "bad_utf8",  # invalid UTF-8 bytes, or a lone surrogate escape
    "bad_content",  # raw_content missing or not a string
    "bad_too_large",  # longer than max_doc_bytes
)
NAMES = (
    "read",
    *DOC_OUTCOMES,
    "tokens",  # tokens of kept documents, EOS separators not included
    "shards_read",  # shards read to their end
    "shards_truncated",  # gzip ended early or is corrupt: the lines before the damage are used
    "shards_failed",  # missing, HTTP error, or unreachable after all retries: skipped
    "duplicates_missing",  # a head/middle shard without a readable duplicates list
    "retries",  # network attempts repeated after an error
    "epochs",  # passes over their shards completed by every row stream (min over streams)
)


def new_counters() -> dict[str, int]:
    return dict.fromkeys(NAMES, 0)


def add(into: dict[str, int], other: dict[str, int]) -> dict[str, int]:
    for k, v in other.items():
        into[k] = into.get(k, 0) + int(v)
    return into


def merge(streams: list[dict[str, int]]) -> dict[str, int]:
    """Counters of several row streams: sums, except `epochs` = passes completed by every stream."""
    total = new_counters()
    for c in streams:
        add(total, c)
    total["epochs"] = min((int(c["epochs"]) for c in streams), default=0)
    return total


def summary(c: dict[str, int]) -> dict[str, int]:
    """The counters plus the totals `data inspect --json` promises: dropped_duplicate and bad."""
    out = dict(c)
    out["dropped_duplicate"] = c["dropped_duplicate_listed"] + c["dropped_duplicate_stream"]
    out["bad"] = c["bad_json"] + c["bad_utf8"] + c["bad_content"] + c["bad_too_large"]
    return out
