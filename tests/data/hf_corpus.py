"""Small corpora for hf:// sources, written as parquet and JSON lines files by the tests, with
what must come out of them (byte tokenizer: tokens == UTF-8 bytes).

Every kind of row the hf:// reader must handle: planted duplicates (in-stream dedup), short
documents, rows without the text field (JSON: key absent; parquet: null), empty text, text over
max_doc_bytes, a multi-byte document that passes on bytes, a JSON file `datasets` cannot parse.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path

from .mirror import MAX_DOC_BYTES, MIN_TOKENS, text


@dataclass
class Corpus:
    root: Path
    glob: str
    kept_ids: list[str] = field(default_factory=list)  # stream order (files in sorted order)
    kept_texts: list[str] = field(default_factory=list)
    counters: dict = field(default_factory=dict)


def _counters(**kw) -> dict:
    c = dict.fromkeys(
        ["read", "kept", "dropped_duplicate_listed", "dropped_duplicate_stream", "dropped_short", "dropped_empty",
         "bad_json", "bad_utf8", "bad_content", "bad_too_large", "tokens", "shards_read", "shards_truncated",
         "shards_failed", "duplicates_missing", "retries"], 0)  # fmt: skip
    c.update(kw, epochs=1)
    c["dropped_duplicate"] = c["dropped_duplicate_listed"] + c["dropped_duplicate_stream"]
    c["bad"] = c["bad_json"] + c["bad_utf8"] + c["bad_content"] + c["bad_too_large"]
    return c


def _write_parquet(path: Path, texts: list, *, binary: bool = False, row_group_size: int = 2) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    col = pa.array(texts, type=pa.binary() if binary else pa.string())
    meta = pa.array([f"row {i}" for i in range(len(texts))])
    pq.write_table(pa.table({"text": col, "meta": meta}), path, row_group_size=row_group_size)


def build_parquet(root: Path) -> Corpus:
    root = Path(root) / "parquet"
    k0, k6 = text(5000, 201), text(MIN_TOKENS, 206)
    k10 = ("é" * 2000) + text(100, 210)  # 2100 characters, 4100 UTF-8 bytes: passes on bytes
    k12, k20, k21 = text(6000, 212), text(4500, 220), text(8000, 221)
    _write_parquet(root / "part-00000.parquet", [
        k0,  # 0 kept
        text(MIN_TOKENS - 1, 202),  # 1 short
        None,  # 2 null: bad_content
        "",  # 3 dropped_empty
        k0,  # 4 in-stream duplicate of 0
        text(MAX_DOC_BYTES + 1, 205),  # 5 bad_too_large
        k6,  # 6 kept: exactly MIN_TOKENS tokens
    ])  # fmt: skip
    _write_parquet(root / "part-00001.parquet", [k10, k6, k12, text(100, 213)])  # kept, dup, kept, short
    _write_parquet(root / "sub" / "part-00002.parquet", [k20, k21])  # a sub-folder: globbed with **
    kept = [("part-00000.parquet", 0, k0), ("part-00000.parquet", 6, k6), ("part-00001.parquet", 0, k10),
            ("part-00001.parquet", 2, k12), ("sub/part-00002.parquet", 0, k20), ("sub/part-00002.parquet", 1, k21)]  # fmt: skip
    c = Corpus(root=root, glob=str(root / "**" / "*.parquet"))
    c.kept_ids = [f"{f}/{r}" for f, r, _ in kept]
    c.kept_texts = [t for _, _, t in kept]
    c.counters = _counters(
        read=13, kept=6, dropped_duplicate_stream=2, dropped_short=2, dropped_empty=1, bad_content=1,
        bad_too_large=1, tokens=sum(len(t.encode()) for t in c.kept_texts), shards_read=3,
    )  # fmt: skip
    return c


def _write_jsonl(path: Path, rows: list) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        for r in rows:
            f.write(r if isinstance(r, bytes) else json.dumps(r, ensure_ascii=False).encode() + b"\n")


def build_json(root: Path) -> Corpus:
    root = Path(root) / "json"
    a0, a5, b1 = text(5000, 301), text(7000, 305), text(4200, 311)
    _write_jsonl(root / "a.jsonl", [
        {"text": a0, "title": "a0"},  # 0 kept
        {"title": "no text field"},  # 1 bad_content: the key is absent
        {"text": None, "title": "null"},  # 2 bad_content
        {"text": text(MIN_TOKENS - 1, 303), "title": "short"},  # 3 short
        {"text": "", "title": "empty"},  # 4 dropped_empty
        {"text": a5, "title": "a5"},  # 5 kept
    ])  # fmt: skip
    _write_jsonl(root / "b.jsonl", [{"text": a0, "title": "copy"}, {"text": b1, "title": "b1"}, {"title": "none"}])
    # datasets' JSON reader gives up on a file at a broken line: no row of it comes out
    _write_jsonl(root / "c.jsonl", [{"text": text(5000, 320), "title": "c0"}, b'{"text": "unterminated\n'])
    c = Corpus(root=root, glob=str(root / "*.jsonl"))
    c.kept_ids = ["a.jsonl/0", "a.jsonl/5", "b.jsonl/1"]
    c.kept_texts = [a0, a5, b1]
    c.counters = _counters(
        read=9, kept=3, dropped_duplicate_stream=1, dropped_short=1, dropped_empty=1, bad_content=3,
        tokens=sum(len(t.encode()) for t in c.kept_texts), shards_read=2, shards_failed=1,
    )  # fmt: skip
    return c


def write_hf_corpus(root: Path, n_files: int = 8, docs_per_file: int = 6, seed: int = 0) -> str:
    """n_files clean parquet files of varied documents (100..2000 bytes); returns their glob."""
    rng = random.Random(seed)
    k = 0
    for i in range(n_files):
        docs = []
        for _ in range(docs_per_file):
            k += 1
            docs.append(text(rng.randrange(100, 2000), 5000 + k))
        _write_parquet(Path(root) / f"train-{i:05d}.parquet", docs)
    return str(Path(root) / "*.parquet")


def sample_as_parquet(out: Path) -> str:
    """data/sample (RedPajama-V2 layout) rewritten as one parquet file per shard: the same
    documents (raw_content of every readable line) for hf://parquet; returns the glob."""
    from stuffed_mamba.data import DataConfig
    from stuffed_mamba.data.counters import new_counters
    from stuffed_mamba.data.documents import open_documents

    reader, tags = open_documents(DataConfig(dedup=False))
    for i, tag in enumerate(tags):
        texts = [t for _, _, t, _ in reader.open(tag, 0, new_counters()) if t is not None]
        _write_parquet(Path(out) / f"sample-{i:05d}.parquet", texts, row_group_size=1000)
    return str(Path(out) / "*.parquet")
