"""hf:// sources: any corpus `datasets` can stream, read as shards of rows.

    hf://OWNER/NAME                     a dataset on the HuggingFace hub (data.hf_config, data.hf_split)
    hf://parquet | hf://json | hf://text with data.hf_data_files: local files, URLs or hf://datasets/... paths

`datasets.load_dataset(..., streaming=True)` does the reading (file formats, remote files,
the hub's own file listing). Its shards (`IterableDataset.num_shards`: one per file, or per
parquet row group with data.hf_reshard) are the pipeline's shards: shard i is
`ds.shard(num_shards, i)`, and the row streams deal them out exactly like RedPajama-V2
shards (dataset.py). A row is addressed by (shard, row index), the position a stream saves.
`datasets` is imported only here, and only when an hf:// source is used.
"""

from __future__ import annotations

import glob
import logging
import os
import time

from stuffed_mamba.errors import first_line

from .config import HF_PREFIX
from .hf_rows import RowRange, shard_rows, shard_sources, split_rows
from .reader import check_text

# datasets' packaged builders for files whose rows can carry text
BUILDERS = ("parquet", "json", "text", "csv", "arrow")
_ROWS = 16  # rows per datasets batch: small, so that a damaged file loses few rows before the damage
log = logging.getLogger(__name__)
# what pyarrow says when `datasets` reads a parquet file of no rows (a batch size of its 0 rows)
_NO_ROWS = "BatchSize must be greater than 0"


class _QuietEmptyFiles(logging.Filter):
    """datasets logs an error for a parquet file of no rows; here it is a shard of no rows."""

    def filter(self, record):
        return _NO_ROWS not in record.getMessage()


def _is_remote(path: str) -> bool:
    return "://" in path


def data_files(cfg) -> list[str] | None:
    """hf_data_files of a file builder as a list of globs; local ones made absolute, each checked
    to match a file."""
    files = cfg.hf_data_files
    if files is None:
        return None
    out = []
    for pattern in [files] if isinstance(files, str) else list(files):
        if _is_remote(pattern):
            out.append(pattern)
            continue
        path = os.path.abspath(os.path.expanduser(pattern))
        if not any(os.path.isfile(p) for p in glob.iglob(path, recursive=True)):
            raise FileNotFoundError(f"data.hf_data_files: no file matches {pattern!r}")
        out.append(path)
    return out


def load_streaming(cfg):
    """The `datasets.IterableDataset` that `cfg` (a DataConfig with an hf:// source) names."""
    name = cfg.source[len(HF_PREFIX) :]
    # a hub dataset's data files are globs inside its repository (e.g. data/train-*.parquet)
    files = data_files(cfg) if "/" not in name else cfg.hf_data_files
    kwargs = {}
    if "/" not in name:
        if name not in BUILDERS:
            raise ValueError(
                f"data.source {cfg.source!r}: use hf://OWNER/NAME for a hub dataset or "
                f"hf://{{{','.join(BUILDERS)}}} with data.hf_data_files"
            )
        if files is None:
            raise ValueError(f"data.source {cfg.source!r} reads data.hf_data_files: give a glob or a list")
    if name == "text":
        kwargs["sample_by"] = "document"  # a file is a document (the builder's default is a line)
    import datasets

    datasets.disable_progress_bars()  # "Resolving data files" bars on every rank and worker
    parquet_log = logging.getLogger("datasets.packaged_modules.parquet.parquet")
    if not any(isinstance(f, _QuietEmptyFiles) for f in parquet_log.filters):
        parquet_log.addFilter(_QuietEmptyFiles())
    try:
        ds = datasets.load_dataset(name, cfg.hf_config, data_files=files, split=cfg.hf_split, streaming=True, **kwargs)
        if cfg.hf_reshard:
            ds = ds.reshard()
    except Exception as e:  # datasets raises many types (hub, network, format, unknown split)
        hint = ""
        if "/" in name and "reach" in str(e):
            hint = f"; without network, mirror it where there is: stuffed-mamba data prepare {cfg.source} DIR"
        raise ValueError(f"data.source {cfg.source}: {first_line(e)}{hint}") from None
    return ds


def _shard_labels(ds) -> list[str] | None:
    """The file (and row group) behind every shard; None when `datasets` does not say."""
    sources = shard_sources(ds)
    if sources is None:
        return None
    return [f if g is None else f"{f}:rg{'+'.join(map(str, g))}" for f, g in sources]


def _strip_common_dir(names: list[str]) -> list[str]:
    dirs = [n.split("/")[:-1] for n in names]
    k = 0
    while all(len(d) > k for d in dirs) and len({d[k] for d in dirs}) == 1:
        k += 1
    return ["/".join(n.split("/")[k:]) for n in names]


def shard_names(ds) -> list[str]:
    """A stable name per shard: its file path below the files' common folder (plus ':rgK' for a
    parquet row group), or shard-00000... when the files cannot be told apart."""
    labels = _shard_labels(ds)
    if labels is None or len(set(labels)) != len(labels):
        return [f"shard-{i:05d}" for i in range(ds.num_shards)]
    return _strip_common_dir(labels)


def no_text_field(counters: dict) -> bool:
    """Every row read lacked the text field (or held no text in it)."""
    return counters["read"] > 0 and counters["bad_content"] == counters["read"]


class HFReader:
    """Rows of the shards of a streaming `datasets` corpus (same interface as RPv2Reader).

    `open(name, start, counters)` yields (row, doc_id, text, utf8) from row `start` on, or
    (row, doc_id, None, outcome) for a row without usable text (text field missing or null:
    bad_content; not text: bad_content; bytes that are not UTF-8: bad_utf8; "": dropped_empty;
    over max_doc_bytes: bad_too_large). doc_id is "{shard name}/{row}". A shard `datasets`
    cannot read to its end counts as failed (no row) or truncated (the rows before the error
    are used), like a RedPajama-V2 shard.
    """

    def __init__(self, cfg):
        self.source = cfg.source
        self.field = cfg.text_field
        self.max_doc_bytes = cfg.max_doc_bytes
        self.ds = load_streaming(cfg)
        self.columns = list(self.ds.features) if self.ds.features is not None else None
        if self.columns is not None and self.field not in self.columns:
            raise ValueError(
                f"data.text_field {self.field!r} is not a column of {self.source} (columns: {', '.join(self.columns)})"
            )
        self.base_names = shard_names(self.ds)
        self.rows_per_shard = cfg.hf_rows_per_shard
        if self.rows_per_shard is None:
            self.ranges = {name: RowRange(i, 0, None) for i, name in enumerate(self.base_names)}
        else:
            try:
                rows = [n for n, _ in shard_rows(self.ds)]
            except ValueError as e:
                raise ValueError(
                    f"data.hf_rows_per_shard needs parquet files (their footers count the rows): {e}"
                ) from None
            self.ranges = split_rows(self.base_names, rows, self.rows_per_shard)
        self.names = list(self.ranges)
        self.last_error = None
        files = cfg.hf_data_files
        files = [files] if isinstance(files, str) else list(files or [])
        # network reads are retried (re-open the shard, skip the rows delivered), like RPv2 shards
        self.remote = "/" in cfg.source[len(HF_PREFIX) :] or any(_is_remote(f) for f in files)
        self.retries, self.backoff_s = cfg.retries, cfg.retry_backoff_s

    def __str__(self):
        return self.source

    def empty_hint(self, counters) -> str:
        if no_text_field(counters):
            return f"no row has text in a field {self.field!r}: set data.text_field"
        if self.last_error:
            return f"check data.source (last read error: {self.last_error})"
        return "lower data.min_doc_tokens or check data.source"

    def open(self, name: str, start: int, counters: dict):
        return self._rows(name, start, counters)

    def _rows(self, name: str, start: int, counters: dict):
        """Rows of shard `name` from its row `start` on: rows are numbered from the start of the
        range (positions), ids count from the start of the `datasets` shard."""
        r = self.ranges[name]
        base, hi = self.base_names[r.base], r.hi
        delivered, attempt = False, 0
        while True:
            sub = self.ds.shard(num_shards=len(self.base_names), index=r.base)
            row = 0
            try:
                # .iter, not iter(sub): in a DataLoader worker the latter would split the shard
                # again over the workers
                for batch in sub.iter(batch_size=_ROWS):
                    col = batch.get(self.field)
                    n = len(col) if col is not None else len(next(iter(batch.values()), ()))
                    delivered = True
                    for j in range(max(0, r.lo + start - row), n if hi is None else min(n, hi - row)):
                        start = row + j - r.lo + 1
                        yield (
                            row + j - r.lo,
                            f"{base}/{row + j}",
                            *check_text(col[j] if col is not None else None, self.max_doc_bytes),
                        )
                    row += n
                    if hi is not None and row >= hi:
                        break
            except Exception as e:  # whatever datasets raised while reading this shard's files
                if _NO_ROWS in str(e) and not delivered:  # a parquet file of no rows: read, empty
                    counters["shards_read"] += 1
                    return
                # a broken connection: re-open and skip what was delivered (data errors are final)
                if self.remote and not isinstance(e, ValueError) and attempt < self.retries:
                    counters["retries"] += 1
                    time.sleep(self.backoff_s * 2**attempt)
                    attempt += 1
                    continue
                self.last_error = f"{name}: {first_line(e)}"
                log.warning("data: %s: %s", self.source, self.last_error)
                counters["shards_truncated" if delivered else "shards_failed"] += 1
                return
            counters["shards_read"] += 1
            return
