"""One document stream: shards -> documents -> dedup -> length filter -> token arrays.

A stream owns a list of shards and walks them epoch after epoch (a fresh seeded shard order
per epoch when shuffled). Its position (epoch, shard, row), its dedup memory and its
counters are its whole state; a restored stream continues exactly where it stopped.
A reader turns one shard into documents: `RPv2Reader` (reader.py) for RedPajama-V2 shards,
`HFReader` (hf.py) for the shards of a `datasets` streaming dataset; everything after
reading is the same for both.
"""

from __future__ import annotations

import numpy as np

from .counters import new_counters
from .dedup import StreamDedup


class EmptyStream(RuntimeError):
    pass


class DocumentStream:
    def __init__(
        self,
        reader,
        tags: list[str],
        tokenizer,
        *,
        min_doc_tokens: int,
        dedup: bool,
        dedup_memory: int,
        tokenize_batch_bytes: int,
        shuffle_seed: list[int] | None = None,
        epochs: int | None = 1,
        name: str = "stream",
    ):
        self.reader = reader
        self.tags = list(tags)
        self.tokenizer = tokenizer
        self.min_doc_tokens = min_doc_tokens
        self.stream_dedup = StreamDedup(dedup_memory if dedup else 0)
        self.tokenize_batch_bytes = tokenize_batch_bytes
        self.shuffle_seed = shuffle_seed
        self.epochs = epochs
        self.name = name
        self.counters = new_counters()
        self.epoch = 0
        self.shard_pos = 0
        self.line = 0  # next line (row) to read in the current shard
        self.kept_in_epoch = 0
        self._lines = None
        self._epoch_ended = False
        self._order = None

    # -- position ---------------------------------------------------------------------
    @property
    def finished(self) -> bool:
        return not self.tags or (self.epochs is not None and self.epoch >= self.epochs)

    def order(self, epoch: int) -> list[str]:
        if self.shuffle_seed is None:
            return self.tags
        perm = np.random.default_rng([*self.shuffle_seed, epoch]).permutation(len(self.tags))
        return [self.tags[i] for i in perm]

    def state_dict(self) -> dict:
        return {
            "epoch": self.epoch,
            "shard_pos": self.shard_pos,
            "line": self.line,
            "kept_in_epoch": self.kept_in_epoch,
            "dedup": self.stream_dedup.state_dict(),
            "counters": dict(self.counters),
        }

    def load_state_dict(self, sd: dict) -> None:
        self.epoch, self.shard_pos, self.line = int(sd["epoch"]), int(sd["shard_pos"]), int(sd["line"])
        self.kept_in_epoch = int(sd["kept_in_epoch"])
        self.stream_dedup.load_state_dict(sd["dedup"])
        self.counters.update({k: int(v) for k, v in sd["counters"].items()})
        self._lines, self._order = None, None

    # -- reading ----------------------------------------------------------------------
    def _open_shard(self):
        if self._order is None:
            self._order = self.order(self.epoch)
        self._lines = self.reader.open(self._order[self.shard_pos], self.line, self.counters)

    def _next_shard(self):
        self._lines, self.line = None, 0
        self.shard_pos += 1
        if self.shard_pos == len(self.tags):
            self.shard_pos, self._order = 0, None
            self._epoch_ended = True

    def _next_candidate(self):
        """(doc_id, text) of the next document that may pass, or None at an epoch's end."""
        c = self.counters
        while not self._epoch_ended:
            if self._lines is None:
                self._open_shard()
            item = next(self._lines, None)
            if item is None:
                self._next_shard()
                continue
            line, doc_id, text, utf8 = item
            self.line = line + 1
            c["read"] += 1
            if text is None:  # utf8 names the outcome
                c[utf8] += 1
                continue
            # a byte-level BPE never makes more tokens than bytes: skip before tokenizing
            if len(utf8) < self.min_doc_tokens:
                c["dropped_short"] += 1
                continue
            if self.stream_dedup.seen(utf8):
                c["dropped_duplicate_stream"] += 1
                continue
            return doc_id, text, len(utf8)
        return None

    def next_batch(self) -> list[tuple[str, np.ndarray]] | None:
        """The kept documents of the next tokenizer batch as (doc_id, int32 tokens); [] when a
        batch kept nothing; None once the stream is finished."""
        if self.finished:
            return None
        ids, texts, nbytes = [], [], 0
        while nbytes < self.tokenize_batch_bytes:
            item = self._next_candidate()
            if item is None:
                break
            ids.append(item[0])
            texts.append(item[1])
            nbytes += item[2]
        kept = []
        if texts:
            for doc_id, toks in zip(ids, self.tokenizer.encode_arrays(texts), strict=True):
                if len(toks) < self.min_doc_tokens:
                    self.counters["dropped_short"] += 1
                    continue
                kept.append((doc_id, toks))
                self.counters["kept"] += 1
                self.counters["tokens"] += len(toks)
        self.kept_in_epoch += len(kept)
        if self._epoch_ended:
            self._epoch_ended = False
            if self.kept_in_epoch == 0 and (self.epochs is None or self.epoch + 1 < self.epochs):
                c = self.counters
                raise EmptyStream(
                    f"{self.name}: no document passed in a whole pass over its {len(self.tags)} shard(s) "
                    f"(read {c['read']}, short {c['dropped_short']}, duplicates "
                    f"{c['dropped_duplicate_listed'] + c['dropped_duplicate_stream']}, bad {_bad(c)}, "
                    f"failed shards {c['shards_failed']}); {self.reader.empty_hint(c)}"
                )
            self.epoch += 1
            self.counters["epochs"] += 1
            self.kept_in_epoch = 0
            self.stream_dedup.clear()  # a new pass repeats documents on purpose
        return kept

    def __iter__(self):
        """(doc_id, tokens) of every kept document until the stream is finished."""
        while True:
            batch = self.next_batch()
            if batch is None:
                return
            yield from batch


def _bad(c: dict) -> int:
    return c["bad_json"] + c["bad_utf8"] + c["bad_content"] + c["bad_too_large"]
