"""Re-split a small local mirror into more shards, so that a sweep can use more batch rows.

The data pipeline gives every batch row its own shards (DESIGN section 3), so a corpus of
18 shards (data/sample) feeds at most 18 rows. A sweep that keeps the tokens per step equal
across training lengths (B = batch_tokens / T_train) needs B up to batch_tokens / min(T).
This writes the same documents, exact-deduplicated, into `shards` shards of the RedPajama-V2
layout balanced by size (tail partition: no duplicates lists needed), with one listing.
"""

from __future__ import annotations

import gzip
import hashlib
import json
from pathlib import Path


def read_documents(source: Path) -> tuple[list[dict], int]:
    """(documents, bad): every readable JSON line with a non-empty `raw_content`, in path order."""
    docs, bad, seen = [], 0, set()
    for f in sorted((Path(source) / "documents").rglob("*.json.gz")):
        try:
            with gzip.open(f, "rt", encoding="utf-8", errors="strict") as fh:
                for line in fh:
                    try:
                        d = json.loads(line)
                        text = d["raw_content"]
                    except (json.JSONDecodeError, KeyError, TypeError):
                        bad += 1
                        continue
                    if not isinstance(text, str) or not text.strip():
                        bad += 1
                        continue
                    digest = hashlib.sha1(text.encode("utf-8")).hexdigest()
                    if digest in seen:  # exact duplicate: the pipeline would drop it anyway
                        continue
                    seen.add(digest)
                    docs.append({"raw_content": text, "url": d.get("url", ""), "length": len(text), "digest": digest})
        except (OSError, EOFError, UnicodeDecodeError):  # truncated or corrupt shard: keep what was read
            bad += 1
    return docs, bad


def reshard(source: str | Path, out: str | Path, shards: int) -> dict:
    """Write `out` once (an existing `out` is kept); returns counts.

    Written into a temporary folder and renamed into place, so that concurrent Slurm array
    tasks never read a half-written mirror.
    """
    import os
    import shutil

    out = Path(out)
    if out.exists():
        return {"out": str(out), "skipped": True}
    docs, bad = read_documents(Path(source))
    if len(docs) < shards:
        raise ValueError(f"{source}: {len(docs)} documents cannot fill {shards} shards")
    # longest first, each to the shard with the fewest bytes so far: every shard gets one of
    # the `shards` longest documents, so no row stream is left with only short ones (which
    # the length filter would drop, starving the row)
    order = sorted(range(len(docs)), key=lambda i: -docs[i]["length"])
    members: list[list[int]] = [[] for _ in range(shards)]
    sizes = [0] * shards
    for i in order:
        k = min(range(shards), key=sizes.__getitem__)
        members[k].append(i)
        sizes[k] += docs[i]["length"]
    tmp = out.with_name(f"{out.name}.tmp-{os.getpid()}")
    tags = []
    for k in range(shards):
        tag = f"resharded/{k:04d}/en_tail"
        path = tmp / "documents" / f"{tag}.json.gz"
        path.parent.mkdir(parents=True, exist_ok=True)
        with gzip.open(path, "wt", encoding="utf-8") as fh:
            for i in sorted(members[k]):  # stream order within a shard as in the source
                fh.write(json.dumps(docs[i]) + "\n")
        tags.append(tag)
    (tmp / "listings").mkdir(parents=True, exist_ok=True)
    (tmp / "listings" / "en-resharded-tail.txt").write_text("\n".join(tags) + "\n")
    try:
        os.rename(tmp, out)
    except OSError:  # another task got there first: theirs is identical
        shutil.rmtree(tmp, ignore_errors=True)
    return {"out": str(out), "documents": len(docs), "bad": bad, "shards": shards, "skipped": False}
