#!/usr/bin/env python3
"""End-to-end data pipeline throughput vs. raw `tokenizers` batch encoding, same documents, one run.

    python benchmarks/data_throughput.py [--source data/sample] [--tokenizer SPEC]
        [--min-doc-tokens 4096] [--repeats 3] [--workers 0,2]
    python benchmarks/data_throughput.py --parquet-copy /tmp/sample_pq [--workers 0,2]   # the hf:// path
    python benchmarks/data_throughput.py --source hf://parquet --data-files 'DIR/*.parquet' [--text-field F]

Reference: `encode_batch_fast` of the kept documents' texts (already in memory), in batches of
the pipeline's size, with tokenizers' Rust threads. Pipeline: build_dataloader (gzip, JSON
lines, listed + in-stream dedup, byte and token length filters, tokenize, pack into episodes)
over the same source, one pass (epochs=1), all episodes consumed. --parquet-copy DIR writes
data/sample's documents as one parquet file per shard into DIR and times the hf:// path
(`datasets` streaming) over them: the same text as the RedPajama-V2 run. Both count the tokens of the
kept documents; tokens/s of each and their ratio are printed. Best of --repeats (the machine is
shared). The pipeline also tokenizes documents that pass the byte pre-filter and then fail the
token filter: that work is part of its cost.
"""

from __future__ import annotations

import argparse
import os
import sys
import time


def raw_rate(spec, texts, batch_bytes):
    from stuffed_mamba.data import load_tokenizer

    # a fresh tokenizer per run, as the pipeline loads one: BPE's word cache starts cold in both
    tok = load_tokenizer(spec)
    c0, t0 = time.process_time(), time.perf_counter()
    n, batch, size = 0, [], 0
    for t in texts:
        batch.append(t)
        size += len(t.encode("utf-8"))
        if size >= batch_bytes:
            n += sum(len(e) for e in tok.encode_arrays(batch))
            batch, size = [], 0
    if batch:
        n += sum(len(e) for e in tok.encode_arrays(batch))
    return n, time.perf_counter() - t0, time.process_time() - c0


def pipeline_rate(cfg):
    from stuffed_mamba.data import build_dataloader

    c0, t0 = time.process_time(), time.perf_counter()
    loader = build_dataloader(cfg)
    episodes = sum(1 for _ in loader)
    dt, cpu = time.perf_counter() - t0, time.process_time() - c0
    c = loader.counters()
    # worker processes' CPU time is not this process's: only the wall clock compares there
    return c["tokens"], dt, (cpu if cfg.num_workers == 0 else None), episodes


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", default="data/sample")
    ap.add_argument("--listing", default=None)
    ap.add_argument("--tokenizer", default="data/sample/tokenizer.json")
    ap.add_argument("--min-doc-tokens", type=int, default=4096)
    ap.add_argument("--train-length", type=int, default=2048)
    ap.add_argument("--segments", type=int, default=12)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--workers", default="0", help="comma-separated num_workers values to time")
    ap.add_argument("--data-files", default=None, help="data.hf_data_files of an hf:// source")
    ap.add_argument("--text-field", default="text")
    ap.add_argument("--parquet-copy", metavar="DIR", help="write data/sample as parquet into DIR, time hf://parquet")
    args = ap.parse_args(argv)
    if args.parquet_copy:
        args.source, args.data_files = "hf://parquet", _parquet_copy(args.parquet_copy)

    from stuffed_mamba.data import DataConfig, load_tokenizer
    from stuffed_mamba.data.documents import open_documents
    from stuffed_mamba.data.stream import DocumentStream

    tok = load_tokenizer(args.tokenizer)
    hf = dict(hf_data_files=args.data_files, text_field=args.text_field) if args.source.startswith("hf://") else {}
    base = DataConfig(
        source=args.source, listing=args.listing, tokenizer=args.tokenizer, min_doc_tokens=args.min_doc_tokens,
        train_length=args.train_length, segments=args.segments, batch_size=1, epochs=1, shuffle_shards=False, **hf,
    )  # fmt: skip

    # the kept documents' texts, found by the pipeline's own stream stages
    reader, shards = open_documents(base)
    stream = DocumentStream(
        reader, shards, tok, min_doc_tokens=args.min_doc_tokens, dedup=True,
        dedup_memory=base.dedup_memory, tokenize_batch_bytes=base.tokenize_batch_bytes, epochs=1,
    )  # fmt: skip
    kept_ids = {doc_id for doc_id, _ in stream}
    texts = _texts(reader, shards, kept_ids)

    from dataclasses import replace

    workers = [int(x) for x in args.workers.split(",")]
    wall: dict = {}
    cpu: dict = {}
    ntok: dict = {}
    eps: dict = {}
    # interleaved repeats, best of each: other jobs on a shared machine only ever slow a run down
    for _ in range(args.repeats):
        runs = [("raw", None)] + [(w, w) for w in workers]
        for key, w in runs:
            if key == "raw":
                n, dt, c = raw_rate(args.tokenizer, texts, base.tokenize_batch_bytes)
            else:
                n, dt, c, eps[key] = pipeline_rate(replace(base, num_workers=w))
            ntok[key] = n
            wall[key] = min(wall.get(key, dt), dt)
            cpu[key] = None if c is None else min(cpu.get(key, c), c)
    names = {"raw": "raw tokenizers encode_batch_fast"}
    names.update({w: f"pipeline, num_workers={w} ({eps[w]} episodes)" for w in workers})

    print(f"source {args.source}: {len(texts)} kept documents, tokenizer {args.tokenizer}, "
          f"{os.cpu_count()} CPU cores, load average {os.getloadavg()[0]:.1f}, best of {args.repeats}")  # fmt: skip
    print(f"{'run':<44} {'tokens':>10} {'wall s':>7} {'tokens/s':>10} {'ratio':>6} {'CPU s':>7} "
          f"{'tok/CPU-s':>10} {'ratio':>6}")  # fmt: skip
    for key in names:
        tps = ntok[key] / wall[key]
        line = (
            f"{names[key]:<44} {ntok[key]:>10,} {wall[key]:>7.3f} {tps:>10,.0f} {tps * wall['raw'] / ntok['raw']:>6.2f}"
        )
        if cpu[key] is not None:
            cps = ntok[key] / cpu[key]
            line += f" {cpu[key]:>7.3f} {cps:>10,.0f} {cps * cpu['raw'] / ntok['raw']:>6.2f}"
        print(line)
    print("ratio = tokens/s of the run / tokens/s of the raw tokenizer (wall clock; CPU time of this process)")
    if any(ntok[w] != ntok["raw"] for w in workers):
        print(f"WARNING: token counts differ: {ntok}")
        return 1
    return 0


def _texts(reader, shards, ids):
    """The text of the given document ids, in stream order (read again through the same reader)."""
    from stuffed_mamba.data.counters import new_counters

    return [text for tag in shards for _, doc_id, text, _ in reader.open(tag, 0, new_counters()) if doc_id in ids]


def _parquet_copy(out: str) -> str:
    """data/sample's documents (every readable line) as one parquet file per shard; returns the glob."""
    from pathlib import Path

    import pyarrow as pa
    import pyarrow.parquet as pq
    from stuffed_mamba.data import DataConfig
    from stuffed_mamba.data.counters import new_counters
    from stuffed_mamba.data.documents import open_documents

    reader, tags = open_documents(DataConfig(dedup=False))
    Path(out).mkdir(parents=True, exist_ok=True)
    for i, tag in enumerate(tags):
        texts = [t for _, _, t, _ in reader.open(tag, 0, new_counters()) if t is not None]
        pq.write_table(pa.table({"text": pa.array(texts, pa.string())}), Path(out) / f"sample-{i:05d}.parquet")
    return str(Path(out) / "*.parquet")


if __name__ == "__main__":
    sys.exit(main())
