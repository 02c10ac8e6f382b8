"""RedPajama-V2 sources: a local mirror folder or a base URL with the same layout.

    listings/{lang}-{snapshot}-{partition}.txt        one shard tag a line, e.g. 2023-06/0000/en_head
    documents/{tag}.json.gz                           gzip JSON lines (raw_content, url, ...)
    duplicates/{tag}.duplicates.parquet               columns shard_id, doc_id, digest (head/middle only)

Network reads retry with exponential back-off on time-outs, connection errors, 429 and 5xx;
a 404 is final. A shard that stays unreachable is skipped by the caller and counted.
"""

from __future__ import annotations

import io
import re
import time
import urllib.error
import urllib.request
from http.client import HTTPException
from pathlib import Path

from .paths import is_url, resolve_local

_TAG = re.compile(r"^[A-Za-z0-9_.\-]+(/[A-Za-z0-9_.\-]+)*$")


class Unavailable(Exception):
    """A file of the source cannot be read (missing, HTTP error, or retries exhausted)."""


NETWORK_ERRORS = (OSError, HTTPException)


class LocalSource:
    remote = False

    def __init__(self, root: Path):
        self.root = root

    def __str__(self):
        return str(self.root)

    def listing_names(self) -> list[str]:
        return sorted(p.name for p in (self.root / "listings").glob("*.txt"))

    def open(self, rel: str, counters=None):
        try:
            return open(self.root / rel, "rb")
        except OSError as e:
            raise Unavailable(f"{rel}: {e.strerror or e}") from None

    def read_bytes(self, rel: str, counters=None) -> bytes:
        with self.open(rel) as f:
            return f.read()


class HttpSource:
    remote = True

    def __init__(self, base: str, *, timeout_s: float, retries: int, backoff_s: float):
        self.base = base.rstrip("/")
        self.timeout_s = timeout_s
        self.retries = retries
        self.backoff_s = backoff_s

    def __str__(self):
        return self.base

    def listing_names(self) -> list[str]:
        raise ValueError(f"data.listing is required for a URL source ({self.base}): name a listings/*.txt file")

    def _retrying(self, rel: str, fetch, counters):
        """fetch(url) with retries on transient errors; a 4xx other than 429 is final."""
        url = f"{self.base}/{rel}"
        last = ""
        for attempt in range(self.retries + 1):
            if attempt:
                if counters is not None:
                    counters["retries"] += 1
                time.sleep(self.backoff_s * 2 ** (attempt - 1))
            try:
                return fetch(url)
            except urllib.error.HTTPError as e:
                e.close()
                if e.code != 429 and e.code < 500:
                    raise Unavailable(f"{url}: HTTP {e.code}") from None
                last = f"HTTP {e.code}"
            except NETWORK_ERRORS as e:
                last = f"{type(e).__name__}: {e}"
        raise Unavailable(f"{url}: {last} after {self.retries + 1} attempts")

    def open(self, rel: str, counters=None):
        """A streaming binary response for base/rel (the caller handles errors while reading)."""
        return self._retrying(rel, lambda url: urllib.request.urlopen(url, timeout=self.timeout_s), counters)

    def read_bytes(self, rel: str, counters=None) -> bytes:
        def fetch(url):
            with urllib.request.urlopen(url, timeout=self.timeout_s) as resp:
                return resp.read()

        return self._retrying(rel, fetch, counters)


def open_source(spec: str, *, timeout_s: float = 60.0, retries: int = 5, backoff_s: float = 1.0):
    if is_url(spec):
        return HttpSource(spec, timeout_s=timeout_s, retries=retries, backoff_s=backoff_s)
    root = resolve_local(spec)
    if root is None or not root.is_dir():
        raise FileNotFoundError(f"data source {spec!r} is neither a URL nor an existing folder")
    return LocalSource(root)


def documents_path(tag: str) -> str:
    return f"documents/{tag}.json.gz"


def duplicates_path(tag: str) -> str:
    return f"duplicates/{tag}.duplicates.parquet"


def has_duplicates_list(tag: str) -> bool:
    """RedPajama-V2 publishes duplicate ids for the head and middle partitions, not tail."""
    return not tag.endswith("_tail")


def parse_listing(text: str, name: str) -> list[str]:
    tags, seen = [], set()
    for i, line in enumerate(text.splitlines()):
        tag = line.strip()
        if not tag or tag.startswith("#"):
            continue
        if not _TAG.match(tag) or ".." in tag.split("/"):
            raise ValueError(f"listing {name} line {i + 1}: {tag!r} is not a shard tag like 2023-06/0000/en_head")
        if tag not in seen:  # a repeated tag would feed its documents twice
            seen.add(tag)
            tags.append(tag)
    return tags


def read_shard_tags(source, listing: str | None) -> list[str]:
    """The shard tags of one listing (a listings/ name or a local file), or of all listings."""
    if listing is None:
        names = source.listing_names()
        if not names:
            raise FileNotFoundError(f"no listings/*.txt under {source}{_files_hint(source)}")
        tags, seen = [], set()
        for name in names:
            for t in read_shard_tags(source, name):
                if t not in seen:
                    seen.add(t)
                    tags.append(t)
        return tags
    local = resolve_local(listing) if not is_url(listing) else None
    if local is not None and local.is_file():
        return parse_listing(local.read_text(encoding="utf-8"), str(local))
    name = listing if listing.endswith(".txt") else listing + ".txt"
    try:
        raw = source.read_bytes(f"listings/{name}")
    except Unavailable as e:
        raise FileNotFoundError(f"listing {listing!r} not found: {e}") from None
    return parse_listing(raw.decode("utf-8"), name)


# file endings `datasets`' builders read (data.source=hf://BUILDER), most specific first
_BUILDER_FILES = (("parquet", ".parquet"), ("json", ".jsonl"), ("json", ".json"), ("text", ".txt"), ("csv", ".csv"))


def _files_hint(source) -> str:
    """For a local folder of data files without the RedPajama-V2 layout: how hf:// reads them."""
    if not isinstance(source, LocalSource):
        return ""
    for builder, ending in _BUILDER_FILES:
        top = next(source.root.glob(f"*{ending}"), None)
        if top is not None or next(source.root.rglob(f"*{ending}"), None) is not None:
            glob = source.root / ("" if top is not None else "**") / f"*{ending}"
            return (
                f"; it holds {ending} files, which hf:// reads: data.source=hf://{builder} data.hf_data_files='{glob}'"
            )
    return ""


def read_duplicate_ids(source, tag: str, counters=None) -> set[str] | None:
    """The doc ids listed as duplicates for a shard; None when the list cannot be read."""
    import pyarrow.parquet as pq

    try:
        raw = source.read_bytes(duplicates_path(tag), counters)
        table = pq.read_table(io.BytesIO(raw), columns=["doc_id"])
    except Unavailable:
        return None
    except Exception:  # a corrupt parquet file: treat as missing, counted by the caller
        return None
    return set(table.column("doc_id").to_pylist())
