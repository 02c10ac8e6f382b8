"""Is a source fit to train on? One line saying what is wrong and what to do, before a run starts.

`check_source(cfg, world_size=)` lists the shards and deals them to the row streams as the
loader will (a wrong source, or too few shards, fails there), then reads every row stream up
to its first kept document, within `data.check_time_s`: a row stream that keeps nothing in a
whole pass over its shards would stop the run at its first episode. Reading stops at the first
kept document of each stream, so a remote source is read no further than training would read it
first (a shard's first rows, or a parquet row group); what the time budget leaves unread is not
checked (the run's own error names it).
"""

from __future__ import annotations

import time

from .config import DataConfig
from .stream import DocumentStream
from .tokenizer import load_tokenizer


class _OutOfTime(Exception):
    pass


class _TimedReader:
    """A reader whose rows stop coming at a deadline (checked between rows)."""

    def __init__(self, reader, deadline: float):
        self.reader, self.deadline = reader, deadline

    def open(self, name: str, start: int, counters: dict):
        for item in self.reader.open(name, start, counters):
            if time.monotonic() > self.deadline:
                raise _OutOfTime
            yield item


def check_source(cfg: DataConfig, *, world_size: int = 1) -> str:
    """Raise ValueError (one line) unless every row stream of `world_size` ranks keeps a document;
    returns what was checked, in one line."""
    from .dataset import EpisodeDataset  # the loader's own listing, dealing and one-line errors

    ds = EpisodeDataset(cfg, rank=0, world_size=world_size)
    if cfg.check_time_s == 0:
        return "data check off (data.check_time_s=0)"
    t0 = time.monotonic()
    tokenizer = load_tokenizer(cfg.tokenizer)
    reader = _TimedReader(ds.reader, t0 + cfg.check_time_s)
    empty, checked = [], 0
    for g, shards in enumerate(ds.lanes):
        stream = DocumentStream(
            reader,
            shards,
            tokenizer,
            min_doc_tokens=cfg.min_doc_tokens,
            dedup=cfg.dedup,
            dedup_memory=cfg.dedup_memory,
            tokenize_batch_bytes=1,  # tokenize each candidate at once: stop at the first kept one
            epochs=1,
        )
        try:
            batch = stream.next_batch()
            while batch == []:
                batch = stream.next_batch()
        except _OutOfTime:
            break
        checked += 1
        if batch is None:
            empty.append((g, shards, stream.counters))
    if empty:
        raise ValueError(_no_document(cfg, ds, empty))
    seconds = time.monotonic() - t0
    return f"data: a first document found for {checked} of {len(ds.lanes)} row streams in {seconds:.1f} s"


def _no_document(cfg: DataConfig, ds, empty: list) -> str:
    from .counters import merge

    n_lanes = len(ds.lanes)
    if len(empty) == n_lanes:  # every stream read all its shards: the whole source
        return nothing_kept(cfg, ds.reader, merge([e[2] for e in empty]), len(ds.tags))
    g, shards, c = empty[0]
    others = f" (and {len(empty) - 1} more of the {n_lanes})" if len(empty) > 1 else f" of {n_lanes}"
    return (
        f"data: row stream {g}{others} keeps no document: {_counts(c, len(shards))}; {_hint(cfg, ds.reader, c)}, "
        f"or fewer row streams (world_size x workers x batch_size) so that each gets more shards"
    )


def nothing_kept(cfg: DataConfig, reader, c: dict, shards: int) -> str:
    """One line for a whole pass over a source that kept no document: what it held, what to do."""
    return f"data: {cfg.source} yields no document: {_counts(c, shards)}; {_hint(cfg, reader, c)}"


def _counts(c: dict, shards: int) -> str:
    if c["read"] == 0:
        return f"no document in its {shards} shard(s)"
    dups = c["dropped_duplicate_listed"] + c["dropped_duplicate_stream"]
    bad = c["bad_json"] + c["bad_utf8"] + c["bad_content"] + c["bad_too_large"]
    unreadable = c["shards_failed"]
    return (
        f"read {c['read']} document(s) of {shards} shard(s): {c['dropped_short']} short, {dups} duplicate, "
        f"{c['dropped_empty']} empty, {bad} bad" + (f", {unreadable} shard(s) unreadable" if unreadable else "")
    )


def _hint(cfg: DataConfig, reader, c: dict) -> str:
    from .hf import no_text_field  # imports no `datasets`

    if no_text_field(c):
        return reader.empty_hint(c)
    if c["read"] == 0 and c["shards_failed"] == 0:
        if cfg.is_hf:
            return "its files hold no rows: point data.hf_data_files at files that do"
        return "its shards hold no lines: check data.source and data.listing"
    if c["read"] == 0:
        last = getattr(reader, "last_error", None)
        return f"{c['shards_failed']} shard(s) could not be read{f' (last error: {last})' if last else ''}: check data.source"
    if c["dropped_short"] and c["dropped_short"] + c["dropped_duplicate_stream"] >= c["read"] - c["dropped_empty"]:
        return f"lower data.min_doc_tokens (now {cfg.min_doc_tokens})"
    return reader.empty_hint(c)
