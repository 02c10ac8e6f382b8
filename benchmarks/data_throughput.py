#!/usr/bin/env python3
"""End-to-end data pipeline throughput vs. raw `tokenizers` batch encoding, same documents, one run.

    python benchmarks/data_throughput.py [--source data/sample] [--tokenizer SPEC]
        [--min-doc-tokens 4096] [--repeats 3] [--workers 0,2]

Reference: `encode_batch_fast` of the kept documents' texts (already in memory), in batches of
the pipeline's size, with tokenizers' Rust threads. Pipeline: build_dataloader (gzip, JSON
lines, listed + in-stream dedup, byte and token length filters, tokenize, pack into episodes)
over the same source, one pass (epochs=1), all episodes consumed. Both count the tokens of the
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
    args = ap.parse_args(argv)

    from stuffed_mamba.data import DataConfig, load_tokenizer
    from stuffed_mamba.data.documents import open_documents
    from stuffed_mamba.data.source import open_source
    from stuffed_mamba.data.stream import DocumentStream

    tok = load_tokenizer(args.tokenizer)
    base = DataConfig(
        source=args.source, listing=args.listing, tokenizer=args.tokenizer, min_doc_tokens=args.min_doc_tokens,
        train_length=args.train_length, segments=args.segments, batch_size=1, epochs=1, shuffle_shards=False,
    )  # fmt: skip

    # the kept documents' texts, found by the pipeline's own stream stages
    src = open_source(args.source)
    stream = DocumentStream(
        *open_documents(base), tok, min_doc_tokens=args.min_doc_tokens, dedup=True,
        dedup_memory=base.dedup_memory, tokenize_batch_bytes=base.tokenize_batch_bytes, epochs=1,
    )  # fmt: skip
    kept_ids = {doc_id for doc_id, _ in stream}
    texts = _texts(src, kept_ids)

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
        line = f"{names[key]:<44} {ntok[key]:>10,} {wall[key]:>7.3f} {tps:>10,.0f} {tps * wall['raw'] / ntok['raw']:>6.2f}"
        if cpu[key] is not None:
            cps = ntok[key] / cpu[key]
            line += f" {cpu[key]:>7.3f} {cps:>10,.0f} {cps * cpu['raw'] / ntok['raw']:>6.2f}"
        print(line)
    print("ratio = tokens/s of the run / tokens/s of the raw tokenizer (wall clock; CPU time of this process)")
    if any(ntok[w] != ntok["raw"] for w in workers):
        print(f"WARNING: token counts differ: {ntok}")
        return 1
    return 0


def _texts(src, ids):
    """raw_content of the given document ids, in stream order."""
    import json

    from stuffed_mamba.data.reader import gzip_lines

    by_tag = {}
    for doc_id in ids:
        tag, line = doc_id.rsplit(".json.gz/", 1)
        by_tag.setdefault(tag, set()).add(int(line))
    out = []
    for tag, lines in by_tag.items():
        with src.open(f"documents/{tag}.json.gz") as f:
            for i, raw in enumerate(gzip_lines(f, 1 << 40)):
                if i in lines:
                    out.append(json.loads(raw)["raw_content"])
    return out


if __name__ == "__main__":
    sys.exit(main())
