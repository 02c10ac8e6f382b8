"""A small mirror in the exact RedPajama-V2 layout with every kind of input the pipeline must
handle, and what must come out of it (with the byte tokenizer: tokens == UTF-8 bytes)."""

from __future__ import annotations

import json
import random
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from stuffed_mamba.data.mirror import document_record, write_documents, write_duplicates, write_listing

MIN_TOKENS = 4096
MAX_DOC_BYTES = 20_000
WORDS = [
    "the",
    "grass",
    "is",
    "green",
    "sky",
    "blue",
    "sun",
    "yellow",
    "here",
    "we",
    "go",
    "there",
    "and",
    "back",
    "again",
    "state",
    "forget",
    "remember",
]


def text(n_bytes: int, seed: int) -> str:
    """ASCII prose of exactly n_bytes bytes, different for every seed."""
    rng = random.Random(seed)
    out, n = [f"doc{seed}"], len(f"doc{seed}")
    while n < n_bytes:
        w = rng.choice(WORDS)
        out.append(w)
        n += len(w) + 1
    return " ".join(out)[:n_bytes]


def rec(t: str) -> dict:
    return document_record(t, url="https://example.invalid/x")


@dataclass
class Mirror:
    root: Path
    listing: str
    kept_ids: list[str] = field(default_factory=list)  # stream order, listing order of shards
    kept_texts: list[str] = field(default_factory=list)
    counters: dict = field(default_factory=dict)


def build_mirror(root: Path) -> Mirror:
    root = Path(root)
    A, B, C, D, missing = (
        "2023-06/0000/en_head",
        "2023-06/0000/en_middle",
        "2023-06/0001/en_head",
        "2023-06/0000/en_tail",
        "2023-06/0002/en_head",
    )
    a0, a2, a13 = text(5000, 1), text(MIN_TOKENS, 2), ("é" * 2000) + text(100, 13)  # a13: 2100 chars, 4100 bytes
    lines_a = [
        rec(a0),  # 0 kept
        rec(text(MIN_TOKENS - 1, 3)),  # 1 short: 4095 tokens
        rec(a2),  # 2 kept: exactly 4096 tokens
        b'{"raw_content": "unterminated',  # 3 bad_json
        rec(a0),  # 4 listed duplicate of line 0
        {"url": "https://example.invalid/no-content"},  # 5 bad_content (missing)
        b'{"raw_content": "bad \xff\xfe bytes ' + text(5000, 6).encode() + b'"}',  # 6 bad_utf8
        rec(""),  # 7 dropped_empty
        rec(a2),  # 8 in-stream duplicate of line 2 (not listed)
        rec(text(MAX_DOC_BYTES + 1, 9)),  # 9 bad_too_large
        b'{"raw_content": "lone \\ud800 surrogate ' + text(5000, 10).encode() + b'"}',  # 10 bad_utf8
        b"[1, 2, 3]",  # 11 bad_json: not an object
        {"raw_content": 12345},  # 12 bad_content: not a string
        rec(a13),  # 13 kept: 2100 characters but 4100 UTF-8 bytes
    ]
    write_documents(root, A, lines_a)
    write_duplicates(root, A, [4])

    # B: a gzip stream cut inside its third line; the two lines before the damage come out
    b0, b1 = text(6000, 20), text(4500, 21)
    body = (json.dumps(rec(b0)) + "\n" + json.dumps(rec(b1)) + "\n").encode()
    c = zlib.compressobj(wbits=31)
    head = c.compress(body) + c.flush(zlib.Z_FULL_FLUSH)
    tail = c.compress((json.dumps(rec(text(30_000, 22))) + "\n").encode()) + c.flush()
    (root / "documents" / f"{B}.json.gz").write_bytes(head + tail[: len(tail) // 2])
    write_duplicates(root, B, [])

    # C: no duplicates file (counted as missing); its second document repeats A's first (in-stream dup)
    c0 = text(7000, 30)
    write_documents(root, C, [rec(c0), rec(a0)])

    # D: a tail shard (RedPajama-V2 has no duplicate lists there); last line without a newline
    d0, d2 = text(4200, 40), text(8000, 42)
    p = write_documents(root, D, [rec(d0), rec(d0)])
    with open(p, "ab") as f:  # a second gzip member, as `cat a.gz b.gz` makes
        c = zlib.compressobj(wbits=31)
        f.write(c.compress(json.dumps(rec(d2)).encode()) + c.flush())

    write_listing(root, "en-2023-06-test.txt", [A, B, C, D, missing])
    m = Mirror(root=root, listing="en-2023-06-test.txt")
    m.kept_ids = [f"{A}.json.gz/0", f"{A}.json.gz/2", f"{A}.json.gz/13", f"{B}.json.gz/0", f"{B}.json.gz/1",
                  f"{C}.json.gz/0", f"{D}.json.gz/0", f"{D}.json.gz/2"]  # fmt: skip
    m.kept_texts = [a0, a2, a13, b0, b1, c0, d0, d2]
    m.counters = {
        "read": 14 + 2 + 2 + 3,
        "kept": 8,
        "dropped_duplicate_listed": 1,
        "dropped_duplicate_stream": 3,  # A8, C1, D1
        "dropped_short": 1,
        "dropped_empty": 1,
        "bad_json": 2,
        "bad_utf8": 2,
        "bad_content": 2,
        "bad_too_large": 1,
        "tokens": sum(len(t.encode()) for t in [a0, a2, a13, b0, b1, c0, d0, d2]),
        "shards_read": 3,  # A, C, D
        "shards_truncated": 1,  # B
        "shards_failed": 1,  # the missing one
        "duplicates_missing": 2,  # C and the missing shard (D is tail: not looked up)
        "retries": 0,
        "epochs": 1,
        "dropped_duplicate": 4,
        "bad": 7,
    }
    return m


def write_corpus(root: Path, n_shards: int = 8, docs_per_shard: int = 6, seed: int = 0) -> list[str]:
    """A clean mirror of n_shards shards of varied documents (100..2000 bytes); returns the tags."""
    rng = random.Random(seed)
    tags = [f"2023-06/{i:04d}/en_head" for i in range(n_shards)]
    k = 0
    for tag in tags:
        docs = []
        for _ in range(docs_per_shard):
            k += 1
            docs.append(rec(text(rng.randrange(100, 2000), 1000 + k)))
        write_documents(root, tag, docs)
        write_duplicates(root, tag, [])
    write_listing(root, "en-2023-06-corpus.txt", tags)
    return tags
