"""The results table of a state-size sweep: one row per (model size, training length) run.

Stored as JSON lines (`results.jsonl`): each finished run appends one line under an
exclusive file lock, so Slurm array tasks can share one table; a rerun of a cell appends
a newer row, and readers keep the last row of each cell. CSV is accepted too (for tables
written by hand, e.g. the paper's points), with the same column names.

Columns the analyzer needs: `state_size` (N_S, floats) and `train_length` (tokens), plus
`position_loss/learned_to_forget` (section 4.2) and/or `passkey/T_recall` (tokens, section
4.3; 0 or empty when no tested length reached 95% passkey accuracy). Tables written before
the probe registry name them `learned_to_forget` and `t_recall`; both are read.
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

REQUIRED = ("state_size", "train_length")
# the probes' columns the analysis reads: (sweep column, older tables' name)
LEARNED_TO_FORGET = ("position_loss/learned_to_forget", "learned_to_forget")
LATE_LOSS_RISE = ("position_loss/late_loss_rise", "late_loss_rise")
T_RECALL = ("passkey/T_recall", "t_recall")


def column(row: dict[str, Any], names: tuple[str, ...]) -> Any:
    """The first of `names` the row has (None when none)."""
    return next((row[n] for n in names if n in row), None)


# column order for printing and CSV export; extra keys are kept after these
COLUMNS = (
    "cell",
    "model",
    "state_size",
    "train_length",
    "segments",
    "max_steps",
    "tokens_trained",
    "final_train_loss",
    "position_loss/max_within",
    "position_loss/max_beyond",
    "position_loss/beyond_over_within",
    "position_loss/learned_to_forget",
    "passkey/T_recall",
    "fit_seconds",
    "eval_seconds",
    "status",
)


def append_row(path: str | Path, row: dict[str, Any]) -> None:
    """Append one JSON line atomically with respect to other writers of the same table."""
    import fcntl

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps(row, sort_keys=False, default=_json_default) + "\n"
    with open(path, "a", encoding="utf-8") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _json_default(v):
    if hasattr(v, "item"):  # numpy / torch scalars
        return v.item()
    if isinstance(v, Path):
        return str(v)
    raise TypeError(f"cannot store {type(v).__name__} in the results table")


def read_results(path: str | Path) -> tuple[list[dict[str, Any]], int]:
    """(rows, n_skipped): a results.jsonl, a .csv, or a sweep folder holding results.jsonl.

    Lines that are not valid JSON objects or lack the required columns are skipped and
    counted, never fatal: a table a crashed run half-wrote stays readable. When a cell
    appears more than once, its last row wins.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "results.jsonl"
    if not path.exists():
        raise FileNotFoundError(f"{path}: no results table here")
    raw: list[Any] = []
    skipped = 0
    if path.suffix == ".csv":
        with open(path, newline="", encoding="utf-8") as f:
            raw = [_parse_csv_row(r) for r in csv.DictReader(f)]
    else:
        for line in path.read_text(encoding="utf-8").splitlines():
            if not line.strip():
                continue
            try:
                raw.append(json.loads(line))
            except json.JSONDecodeError:
                skipped += 1
    rows: dict[Any, dict[str, Any]] = {}
    for i, r in enumerate(raw):
        if not isinstance(r, dict) or any(_missing(r.get(k)) for k in REQUIRED):
            skipped += 1
            continue
        rows[r.get("cell") or i] = r
    return list(rows.values()), skipped


def _missing(v) -> bool:
    return v is None or v == "" or (isinstance(v, float) and math.isnan(v))


def _parse_csv_row(r: dict[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in r.items():
        v = (v or "").strip()
        if v == "":
            out[k] = None
        elif v.lower() in ("true", "false"):
            out[k] = v.lower() == "true"
        else:
            try:
                out[k] = int(v)
            except ValueError:
                try:
                    out[k] = float(v)
                except ValueError:
                    out[k] = v
    return out


def write_csv(rows: Iterable[dict[str, Any]], path: str | Path) -> None:
    rows = list(rows)
    keys = [c for c in COLUMNS if any(c in r for r in rows)]
    keys += sorted({k for r in rows for k in r} - set(keys))
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        for r in rows:
            w.writerow({k: _csv_cell(r.get(k)) for k in keys})


def _csv_cell(v):
    if isinstance(v, (list, tuple, dict)):
        return json.dumps(v)
    return "" if v is None else v
