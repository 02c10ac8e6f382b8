"""Writing a local mirror in the RedPajama-V2 layout (sample corpus, `data prepare`, tests)."""

from __future__ import annotations

import gzip
import hashlib
import json
from pathlib import Path


def document_record(text: str, *, url: str, title: str = "", bucket: str = "head") -> dict:
    """A document line with the fields RedPajama-V2 documents carry (the pipeline reads raw_content)."""
    return {
        "url": url,
        "date_download": "2023-06-01T00:00:00Z",
        "digest": "sha1:" + hashlib.sha1(text.encode("utf-8")).hexdigest(),
        "length": len(text),
        "nlines": text.count("\n") + 1,
        "source_domain": url.split("/")[2] if "://" in url else "",
        "title": title,
        "raw_content": text,
        "language": "en",
        "bucket": bucket,
    }


def write_documents(root: Path, tag: str, lines: list[bytes | str | dict]) -> Path:
    """documents/{tag}.json.gz from dicts (JSON-encoded) or raw lines (written as given)."""
    path = Path(root) / "documents" / f"{tag}.json.gz"
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.GzipFile(path, "wb", mtime=0) as f:  # mtime=0: reproducible bytes
        for line in lines:
            if isinstance(line, dict):
                line = json.dumps(line, ensure_ascii=False)
            if isinstance(line, str):
                line = line.encode("utf-8")
            f.write(line + b"\n")
    return path


def write_duplicates(root: Path, tag: str, rows: list[int], digests: list[str] | None = None) -> Path:
    """duplicates/{tag}.duplicates.parquet listing the given line indices of the shard."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(root) / "duplicates" / f"{tag}.duplicates.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.table(
        {
            "shard_id": [tag] * len(rows),
            "doc_id": [f"{tag}.json.gz/{r}" for r in rows],
            "digest": digests if digests is not None else [""] * len(rows),
        }
    )
    pq.write_table(table, path)
    return path


def write_listing(root: Path, name: str, tags: list[str]) -> Path:
    path = Path(root) / "listings" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(t + "\n" for t in tags), encoding="utf-8")
    return path
