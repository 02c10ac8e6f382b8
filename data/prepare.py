"""`stuffed-mamba data prepare`: copy (part of) a RedPajama-V2 or hf:// source into a local mirror.

For clusters whose compute nodes have no outbound network: run it on a login node, then
train with data.source pointing at the mirror. Files land under a temporary name and are
renamed when complete, so an interrupted run is resumed by running it again.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import zlib
from pathlib import Path

from .progress import Progress
from .reader import Truncated, gzip_lines
from .source import (
    Unavailable,
    documents_path,
    duplicates_path,
    has_duplicates_list,
    open_source,
    read_shard_tags,
)


def _fetch(src, rel: str, dest: Path, counters: dict) -> int:
    """Copies src/rel to dest atomically; returns bytes written (0 if dest already exists)."""
    if dest.exists():
        return 0
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    n = 0
    last_err = None
    for _attempt in range(src.retries + 1 if src.remote else 1):
        try:
            with src.open(rel, counters) as r, open(part, "wb") as w:
                shutil.copyfileobj(r, w, 1 << 20)
            n = part.stat().st_size
            os.replace(part, dest)
            return n
        except Unavailable:
            raise
        except OSError as e:  # a broken transfer: start the file again
            last_err = e
            counters["retries"] += 1
    part.unlink(missing_ok=True)
    raise Unavailable(f"{rel}: {last_err}")


def _check_gzip(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            for _ in gzip_lines(f, 1 << 62):
                pass
        return True
    except (Truncated, zlib.error):
        return False


def prepare_mirror(
    source: str,
    out: str,
    *,
    listing: str,
    shards: int | None = None,
    quality_signals: bool = False,
    timeout_s: float = 60.0,
    retries: int = 5,
    progress: Progress | None = None,
) -> dict:
    src = open_source(source, timeout_s=timeout_s, retries=retries)
    tags = read_shard_tags(src, listing)
    if shards is not None:
        tags = tags[:shards]
    root = Path(out)
    counters = {"retries": 0}
    report = {"shards": 0, "failed": [], "truncated": [], "duplicates": 0, "bytes": 0, "retries": 0}
    done = []
    for tag in tags:
        try:
            report["bytes"] += _fetch(src, documents_path(tag), root / documents_path(tag), counters)
        except Unavailable as e:
            report["failed"].append(f"{tag}: {e}")
            continue
        if not _check_gzip(root / documents_path(tag)):
            report["truncated"].append(tag)  # kept: the reader uses the lines before the damage
        if has_duplicates_list(tag):
            try:
                report["bytes"] += _fetch(src, duplicates_path(tag), root / duplicates_path(tag), counters)
                report["duplicates"] += 1
            except Unavailable:
                pass
        if quality_signals:
            rel = f"quality_signals/{tag}.signals.json.gz"
            with contextlib.suppress(Unavailable):
                report["bytes"] += _fetch(src, rel, root / rel, counters)
        done.append(tag)
        report["shards"] += 1
        if progress is not None:
            progress.update(shards=report["shards"], bytes=report["bytes"])
    name = Path(listing).name if listing.endswith(".txt") else Path(listing).name + ".txt"
    (root / "listings").mkdir(parents=True, exist_ok=True)
    (root / "listings" / name).write_text("".join(t + "\n" for t in done), encoding="utf-8")
    report["retries"] = counters["retries"]
    report["listing"] = str(root / "listings" / name)
    return report


def prepare_hf(
    source: str,
    out: str,
    *,
    shards: int | None = None,
    progress: Progress | None = None,
    row_group_bytes: int = 64 << 20,
    **hf,
) -> dict:
    """Mirror an hf:// corpus (e.g. a hub dataset) for nodes without network: shard i of the
    source becomes OUT/shard-{i:05d}-of-{n:05d}.parquet, holding its text field for every row
    (null where a row has no text), so that data.source=hf://parquet with
    data.hf_data_files=OUT/*.parquet streams the same rows in the same order. OUT/manifest.json
    names the source shard of every file. Files land under a temporary name: run it again to resume."""
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    from .config import DataConfig
    from .counters import new_counters
    from .hf import HFReader

    cfg = DataConfig(source=source, max_doc_bytes=1 << 62, **hf)  # a mirror keeps long documents too
    reader = HFReader(cfg)
    names = reader.names[:shards] if shards is not None else reader.names
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    n = len(reader.names)
    field = cfg.text_field
    schema = pa.schema([(field, pa.string())])
    report = {"shards": 0, "failed": [], "truncated": [], "rows": 0, "bytes": 0}
    manifest = {"source": source, "text_field": field, "hf_config": cfg.hf_config, "hf_split": cfg.hf_split,
                "files": {}}  # fmt: skip
    for i, name in enumerate(names):
        dest = root / f"shard-{i:05d}-of-{n:05d}.parquet"
        manifest["files"][dest.name] = name
        if dest.exists():
            report["shards"] += 1
            continue
        part = dest.with_name(dest.name + ".part")
        counters = new_counters()
        rows, size, batch = 0, 0, []
        with pq.ParquetWriter(part, schema) as w:
            for _, _, text, outcome in reader.open(name, 0, counters):
                batch.append(text if text is not None else ("" if outcome == "dropped_empty" else None))
                size += len(outcome) if text is not None else 0  # outcome: the UTF-8 bytes
                rows += 1
                if size >= row_group_bytes:
                    w.write_table(pa.table({field: pa.array(batch, pa.string())}, schema=schema))
                    report["bytes"] += size
                    batch, size = [], 0
                if progress is not None:
                    progress.update(shards=report["shards"], rows=report["rows"] + rows, bytes=report["bytes"] + size)
            if batch:
                w.write_table(pa.table({field: pa.array(batch, pa.string())}, schema=schema))
                report["bytes"] += size
        if counters["shards_failed"]:
            part.unlink(missing_ok=True)
            report["failed"].append(f"{name}: {reader.last_error}")
            del manifest["files"][dest.name]
            continue
        if counters["shards_truncated"]:
            report["truncated"].append(name)  # kept: the rows before the error, as the reader would use
        os.replace(part, dest)
        report["shards"] += 1
        report["rows"] += rows
    (root / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
    report["data_files"] = str(root / "*.parquet")
    return report
