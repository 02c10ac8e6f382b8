"""One shard's lines, robustly: gzip JSON lines in, (line index, text or outcome) out.

The gzip stream is decompressed with zlib directly rather than through `gzip.GzipFile`, so a
truncated shard still yields every complete line before the damage (GzipFile loses its
read-ahead buffer when it raises), and an over-long line is discarded without ever being
held in memory. A network error while reading re-opens the shard and skips the lines
already delivered, so a flaky connection neither loses nor repeats documents.
"""

from __future__ import annotations

import json
import time
import zlib

from .source import NETWORK_ERRORS, Unavailable, documents_path, has_duplicates_list, read_duplicate_ids

TOO_LONG = b"\x00too-long"  # marker for a line over the byte limit (a JSON line cannot start with NUL)
_IN_CHUNK = 1 << 20
_OUT_CHUNK = 16 << 20


class Truncated(Exception):
    """The gzip stream ended early or is corrupt."""


def gzip_lines(raw, max_line_bytes: int):
    """Complete lines (without the newline) of a gzip stream; TOO_LONG for lines over the limit.

    Concatenated gzip members are one stream. Raises Truncated after the last complete line
    when the data ends early or cannot be decompressed.
    """
    d = zlib.decompressobj(31)
    pending: list[bytes] = []
    pending_len = 0
    too_long = False
    started = False
    while True:
        comp = raw.read(_IN_CHUNK)
        if not comp:
            break
        while comp:
            if d.eof:
                d = zlib.decompressobj(31)
            try:
                data = d.decompress(comp, _OUT_CHUNK)
            except zlib.error as e:
                raise Truncated(f"corrupt gzip data: {e}") from None
            started = True
            comp = d.unconsumed_tail if not d.eof else d.unused_data
            if not data:
                continue
            parts = data.split(b"\n")
            for part in parts[:-1]:
                if too_long or pending_len + len(part) > max_line_bytes:
                    yield TOO_LONG
                elif pending:
                    pending.append(part)
                    yield b"".join(pending)
                else:
                    yield part
                pending, pending_len, too_long = [], 0, False
            tail = parts[-1]
            if tail and not too_long:
                pending_len += len(tail)
                if pending_len > max_line_bytes:
                    too_long, pending = True, []
                else:
                    pending.append(tail)
    if not started or not d.eof:
        raise Truncated("gzip stream ended before its end marker")
    if too_long:
        yield TOO_LONG
    elif pending:  # a last line without a newline is complete when the stream is
        yield b"".join(pending)


def shard_lines(source, tag: str, counters: dict, *, start_line: int = 0, max_line_bytes: int, on_error=None):
    """(line index, bytes) for the lines of one shard from `start_line` on; shard-level outcomes
    (read to the end, truncated, failed) are counted here; on_error(text) hears why one failed."""
    line = 0
    reopen = 0
    while True:
        try:
            raw = source.open(documents_path(tag), counters)
        except Unavailable as e:
            counters["shards_failed"] += 1
            if on_error is not None:
                on_error(str(e))
            return
        try:
            with raw:
                for line, text in enumerate(gzip_lines(raw, max_line_bytes)):
                    if line >= start_line:
                        yield line, text
                        start_line = line + 1
            counters["shards_read"] += 1
            return
        except Truncated:
            counters["shards_truncated"] += 1
            return
        except NETWORK_ERRORS:
            # re-open and skip what was delivered; give up like `open` does after its retries
            if not source.remote or reopen >= source.retries:
                counters["shards_failed"] += 1
                return
            counters["retries"] += 1
            time.sleep(source.backoff_s * 2**reopen)
            reopen += 1


def parse_doc(line: bytes, max_doc_bytes: int):
    """(text, utf8 bytes) of a document line, or (None, outcome counter name)."""
    if line is TOO_LONG:
        return None, "bad_too_large"
    try:
        doc = json.loads(line)
    except UnicodeDecodeError:
        return None, "bad_utf8"
    except ValueError:
        return None, "bad_json"
    if not isinstance(doc, dict):
        return None, "bad_json"
    return check_text(doc.get("raw_content"), max_doc_bytes)


def check_text(text, max_doc_bytes: int):
    """(text, utf8 bytes) of a document's text field, or (None, outcome counter name)."""
    if isinstance(text, (bytes, bytearray)):  # a binary column (parquet): must be UTF-8
        try:
            text = bytes(text).decode("utf-8")
        except UnicodeDecodeError:
            return None, "bad_utf8"
    if not isinstance(text, str):
        return None, "bad_content"
    if not text:
        return None, "dropped_empty"
    try:
        utf8 = text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate escape such as "\ud800"
        return None, "bad_utf8"
    if len(utf8) > max_doc_bytes:
        return None, "bad_too_large"
    return text, utf8


class RPv2Reader:
    """Documents of RedPajama-V2 shards: the listed duplicates dropped, each line parsed.

    `open(tag, start, counters)` yields (line, doc_id, text, utf8) from line `start` on, or
    (line, doc_id, None, outcome) for a line that ends there; shard-level outcomes are counted.
    """

    def __init__(self, source, *, max_doc_bytes: int, listed_dedup: bool):
        self.source = source
        self.max_doc_bytes = max_doc_bytes
        # JSON escapes make a line at most ~6x its text ("\u0001"); the rest is metadata
        self.max_line_bytes = 6 * max_doc_bytes + (1 << 20)
        self.listed_dedup = listed_dedup
        self.last_error = None  # why the last shard that failed did (for one-line errors)

    def __str__(self):
        return str(self.source)

    def empty_hint(self, counters) -> str:
        return "lower data.min_doc_tokens or check data.source"

    def _failed(self, why: str) -> None:
        self.last_error = why

    def open(self, tag: str, start: int, counters: dict):
        dups = None
        if self.listed_dedup and has_duplicates_list(tag):
            dups = read_duplicate_ids(self.source, tag, counters)
            if dups is None and start == 0:
                counters["duplicates_missing"] += 1
        return self._documents(tag, start, counters, dups)

    def _documents(self, tag, start, counters, dups):
        lines = shard_lines(self.source, tag, counters, start_line=start, max_line_bytes=self.max_line_bytes,
                            on_error=self._failed)  # fmt: skip
        for line, raw in lines:
            doc_id = f"{tag}.json.gz/{line}"
            if dups is not None and doc_id in dups:
                yield line, doc_id, None, "dropped_duplicate_listed"
                continue
            yield (line, doc_id, *parse_doc(raw, self.max_doc_bytes))
