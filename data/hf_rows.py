"""Row counts of parquet shards, and shards of row ranges (data.hf_rows_per_shard).

With K = data.hf_rows_per_shard, a shard of `datasets` (a parquet file, or one of its row
groups with data.hf_reshard) holding n rows becomes ceil(n / K) shards of K consecutive rows,
named `{shard}:rows{lo}-{hi}` (rows lo to hi, both included; a shard of no rows gives none).
They are ordinary shards to the row streams: each owns disjoint row ranges, and a position
inside a range is saved and restored like a position inside a file. The counts come from the
parquet footers (a few KB per file, remote files too), never from reading the rows.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RowRange:
    base: int  # index of the `datasets` shard holding the rows
    lo: int  # first row (index in the base shard)
    hi: int | None  # one past the last row; None = to the shard's end


def shard_sources(ds) -> list[tuple[str, tuple | None]] | None:
    """(file, row groups or None) of every shard of a streaming dataset, from the generator
    arguments `datasets` splits into shards (one list entry per shard); None when they do not say."""
    it = ds._ex_iterable
    while it is not None and not hasattr(it, "kwargs"):
        it = getattr(it, "ex_iterable", None)
    kwargs = getattr(it, "kwargs", None) or {}
    files = kwargs.get("base_files", kwargs.get("files"))
    n = ds.num_shards
    if not (isinstance(files, list) and len(files) == n and all(isinstance(f, str) for f in files)):
        return None
    groups = kwargs.get("row_groups_list")
    if not (isinstance(groups, list) and len(groups) == n):
        groups = [None] * n
    return [(f, None if g is None else tuple(g)) for f, g in zip(files, groups, strict=True)]


def _footer(path: str):
    import pyarrow.parquet as pq

    if "://" in path:
        from datasets.utils.file_utils import xopen  # fsspec with the hub's authentication

        with xopen(path, "rb") as f:
            return pq.ParquetFile(f).metadata
    return pq.ParquetFile(path).metadata


def shard_rows(ds) -> list[tuple[int, int]]:
    """(rows, row groups) of every shard, from the parquet footers; ValueError when the shards
    are not parquet files."""
    sources = shard_sources(ds)
    if sources is None:
        raise ValueError("the shards' files are unknown")
    meta, out = {}, []
    for path, groups in sources:
        if path not in meta:
            try:
                meta[path] = _footer(path)
            except Exception as e:  # pyarrow (not parquet), fsspec (unreachable): the same advice
                raise ValueError(f"{path}: {str(e).strip().splitlines()[0] if str(e).strip() else e!r}") from None
        md = meta[path]
        ids = range(md.num_row_groups) if groups is None else groups
        out.append((sum(md.row_group(g).num_rows for g in ids), len(ids)))
    return out


def split_rows(names: list[str], rows: list[int], k: int) -> dict[str, RowRange]:
    """Shards of at most k rows: name -> RowRange, in shard order."""
    out = {}
    for i, (name, n) in enumerate(zip(names, rows, strict=True)):
        for lo in range(0, n, k):
            hi = min(n, lo + k)
            out[f"{name}:rows{lo}-{hi - 1}"] = RowRange(i, lo, hi)
    return out


def n_shards(rows: list[int], k: int) -> int:
    return sum(-(-n // k) for n in rows)


def rows_per_shard_for(rows: list[int], lanes: int) -> int | None:
    """A K that gives every one of `lanes` row streams about the same rows: total // lanes, which
    makes at least `lanes` shards (sum ceil(n/K) >= total/K >= lanes); None when there are fewer
    rows than row streams."""
    total = sum(rows)
    return total // lanes if total >= lanes else None
