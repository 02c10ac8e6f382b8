"""The one-line error for a source with fewer shards than row streams, and what would work instead
(the loader raises it when it deals the shards; `check_source` reports it before a run starts)."""

from __future__ import annotations

from .config import DataConfig


def too_few_shards(cfg: DataConfig, reader, n: int, *, world_size: int, workers: int) -> str:
    """The one-line error for n shards and more row streams, with what would work."""
    lanes = world_size * workers * cfg.batch_size
    rows = _shard_rows(reader) if cfg.is_hf else None
    if rows is not None and sum(r for r, _ in rows) == 0:
        return f"data: {cfg.source} holds no rows in its {len(rows)} file(s): point data.hf_data_files at files that do"
    if n == 0:
        return f"data: {cfg.source} lists no shard: check data.source and data.listing"
    head = (
        f"data: {n} shard(s) cannot feed {lanes} row streams (world_size {world_size} x workers {workers} "
        f"x batch_size {cfg.batch_size}); every row stream needs its own shards"
    )
    fixes = _split_fixes(cfg, rows, lanes) if cfg.is_hf else []
    fit_batch = n // (world_size * workers)
    fewer = f"data.batch_size={fit_batch}" if fit_batch >= 1 else "fewer ranks or data.num_workers"
    fixes.append(f"at most {n} row stream(s) ({fewer})")
    return f"{head}: {', or '.join(fixes)}"


def _shard_rows(reader) -> list[tuple[int, int]] | None:
    """(rows, row groups) per shard of an hf:// reader, from the parquet footers; None if not parquet."""
    from .hf_rows import shard_rows

    try:
        return shard_rows(reader.ds)
    except ValueError:
        return None


def _split_fixes(cfg: DataConfig, counts: list[tuple[int, int]] | None, lanes: int) -> list[str]:
    """Ways to split an hf:// source into at least `lanes` shards."""
    from .hf_rows import n_shards, rows_per_shard_for

    if counts is None:  # not parquet: rows cannot be counted without reading them
        return ["write it as parquet (stuffed-mamba data prepare) and split it with data.hf_rows_per_shard"]
    rows = [r for r, _ in counts]
    groups = sum(g for _, g in counts)
    if not cfg.hf_reshard and cfg.hf_rows_per_shard is None and groups >= lanes:
        return [f"data.hf_reshard=true makes {groups} shards (one per parquet row group)"]
    k = rows_per_shard_for(rows, lanes)
    if k is None:
        return []  # fewer rows than row streams: only fewer row streams help
    return [f"data.hf_rows_per_shard={k} makes {n_shards(rows, k)} shards of at most {k} rows"]
