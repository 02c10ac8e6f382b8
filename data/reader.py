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

from .source import NETWORK_ERRORS, Unavailable, documents_path

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


def shard_lines(source, tag: str, counters: dict, *, start_line: int = 0, max_line_bytes: int):
    """(line index, bytes) for the lines of one shard from `start_line` on; shard-level outcomes
    (read to the end, truncated, failed) are counted here."""
    line = 0
    reopen = 0
    while True:
        try:
            raw = source.open(documents_path(tag), counters)
        except Unavailable:
            counters["shards_failed"] += 1
            return
        try:
            with raw:
                line = 0
                for text in gzip_lines(raw, max_line_bytes):
                    if line >= start_line:
                        yield line, text
                        start_line = line + 1
                    line += 1
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
    text = doc.get("raw_content")
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
