"""Run sweep cells: `fit` each (a subprocess, or the training API in-process), evaluate its last checkpoint
with the registered probes, append a row. What a fit did comes from its FitResult (fit_result.json).

A cell is done when `{run_dir}/result.json` (its row) exists: rerunning a sweep skips done cells,
so an interrupted sweep resumes where it stopped. Its fit is done when the `fit_result.json` that
`fit` writes says it ended with a checkpoint, neither interrupted nor requeued: such a fit is only
evaluated again (and `fit` itself resumes a half-trained run when the base recipe says
`run.resume: auto`). A failed fit or evaluation is recorded as a row with
`status` saying why and never stops the other cells.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from stuffed_mamba.analysis.results import append_row
from stuffed_mamba.errors import first_line
from stuffed_mamba.sweep.recipe import Cell, SweepRecipe, resolved_config


def results_path(recipe: SweepRecipe, out_dir: str | Path | None = None) -> Path:
    return Path(out_dir or recipe.out_dir) / "results.jsonl"


def fit_command(base: Path, cell: Cell) -> list[str]:
    return [sys.executable, "-m", "stuffed_mamba", "fit", os.path.normpath(base), *_fit_args(cell)]


def _fit_args(cell: Cell) -> list[str]:
    # a cell without a finished fit is (re)trained: a half-written run of it may be replaced, unless the
    # base recipe says run.resume: auto, which continues it instead
    return [*cell.overrides, "run.overwrite=true"]


def run_fit(base: Path, cell: Cell, *, timeout_s: float | None, in_process: bool = False):
    """(FitResult or None, why it failed, seconds). The output goes to {run_dir}/fit.log; the
    result is `fit`'s own (in-process) or the fit_result.json it wrote into the run's folder."""
    from stuffed_mamba.training.result import read_result

    cell.run_dir.mkdir(parents=True, exist_ok=True)
    log = cell.run_dir / "fit.log"
    t0 = time.perf_counter()
    if in_process:
        result, why = _fit_in_process(base, cell, log)
        return result, why, time.perf_counter() - t0
    with open(log, "a", encoding="utf-8") as f:
        f.write("$ " + " ".join(fit_command(base, cell)) + "\n")
        f.flush()
        try:
            rc = subprocess.run(
                fit_command(base, cell), stdout=f, stderr=subprocess.STDOUT, timeout=timeout_s, env=os.environ.copy()
            ).returncode
        except subprocess.TimeoutExpired:
            f.write(f"\n[sweep] fit timed out after {timeout_s:.0f} s\n")
            rc = -9
    if rc != 0:
        return None, f"rc={rc}; {_tail(log)}", time.perf_counter() - t0
    result = read_result(cell.run_dir)
    return result, "" if result is not None else "no fit_result.json", time.perf_counter() - t0


def _fit_in_process(base: Path, cell: Cell, log: Path):
    """The training API itself: load_recipe + fit, its output into the cell's fit.log."""
    import traceback
    from contextlib import redirect_stderr, redirect_stdout

    from stuffed_mamba.training.config import ConfigError, load_recipe
    from stuffed_mamba.training.fit import fit

    with open(log, "a", encoding="utf-8") as f, redirect_stdout(f), redirect_stderr(f):
        try:
            return fit(load_recipe(base, _fit_args(cell)), recipe=str(base)), ""
        except ConfigError as e:
            print(f"error: {e}")
            return None, str(e)
        except Exception as e:  # a crash is this cell's failure, never the sweep's
            traceback.print_exc()
            return None, f"{type(e).__name__}: {first_line(e)}"


def _tail(path: Path, n: int = 3) -> str:
    try:
        lines = [l for l in path.read_text(errors="replace").splitlines() if l.strip()]
    except OSError:
        return ""
    return " | ".join(lines[-n:])[-400:]


def run_cell(
    recipe: SweepRecipe,
    base: Path,
    cell: Cell,
    *,
    out_dir: str | Path | None = None,
    force: bool = False,
    in_process: bool = False,
    reevaluate: bool = False,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Fit, evaluate and record one cell; returns its results row.

    reevaluate: evaluate a finished fit again (e.g. after changing the recipe's `eval:`),
    never training; its new row supersedes the old one in the results table.
    """
    done = cell.run_dir / "result.json"
    fitted = finished_fit(cell.run_dir)
    if reevaluate and fitted is None:
        log(f"[sweep] {cell.name}: no finished fit to evaluate again")
        return {"cell": cell.name, "status": "not_fitted"}
    if done.exists() and not force and not reevaluate:
        log(f"[sweep] {cell.name}: already done ({done})")
        return json.loads(done.read_text())
    cfg = resolved_config(base, cell.overrides)
    B, S, max_steps = cfg.data.batch_size, cfg.data.segments, cfg.trainer.max_steps
    row: dict[str, Any] = {
        "cell": cell.name,
        "index": cell.index,
        "model": cell.model,
        "model_fields": cell.model_fields,
        "train_length": cell.train_length,
        "segments": S,
        "batch_size": B,
        "max_steps": max_steps,
        "tokens_trained": None if max_steps is None else int(max_steps) * B * S * cell.train_length,
        "state_size": _state_size(base, cell),
    }
    ckpt = cell.run_dir / "checkpoints" / "last.ckpt"
    if (force and not reevaluate) or fitted is None:
        log(f"[sweep] {cell.name}: fit (N_S={row['state_size']:,}, T_train={cell.train_length}, steps={max_steps})")
        timeout = recipe.fit_timeout_minutes * 60 if recipe.fit_timeout_minutes else None
        result, why, secs = run_fit(base, cell, timeout_s=timeout, in_process=in_process)
        row["fit_seconds"] = round(secs, 1)
        if result is None or result.checkpoint is None:
            row["status"] = f"fit_failed: {why or 'no last.ckpt'}"[:400]
            log(f"[sweep] {cell.name}: {row['status']}")
            return _record(recipe, cell, row, out_dir, final=False)
        fitted = result
    else:  # the earlier row's wall-clock time of the fit, else the fit's own training time
        earlier = json.loads(done.read_text()) if done.exists() else {}
        row["fit_seconds"] = earlier.get("fit_seconds", round(fitted.seconds, 1))
    row["final_train_loss"] = fitted.final_loss
    log(f"[sweep] {cell.name}: evaluate {ckpt}")
    t0 = time.perf_counter()
    try:
        from stuffed_mamba.sweep.evaluate import evaluate_checkpoint

        ev, summaries = evaluate_checkpoint(ckpt, base, cell, recipe.eval)
    except Exception as e:  # recorded, not fatal: the other cells still run
        row["eval_seconds"] = round(time.perf_counter() - t0, 1)
        row["status"] = f"eval_failed: {type(e).__name__}: {first_line(e)}"[:400]
        log(f"[sweep] {cell.name}: {row['status']}")
        return _record(recipe, cell, row, out_dir, final=False)
    (cell.run_dir / "eval").mkdir(exist_ok=True)
    for name, summary in summaries.items():  # the curves and tables behind the row's scalars
        (cell.run_dir / "eval" / f"{name}.json").write_text(json.dumps(summary))
    row["state_size"] = ev.pop("state_size_model")
    row.update(ev)
    row["eval_seconds"] = round(time.perf_counter() - t0, 1)
    row["status"] = "ok"
    log(
        f"[sweep] {cell.name}: learned_to_forget={row.get('position_loss/learned_to_forget')} "
        f"loss_ratio={row.get('position_loss/beyond_over_within')} T_recall={row.get('passkey/T_recall')} "
        f"(fit {row['fit_seconds']} s, eval {row['eval_seconds']} s)"
    )
    return _record(recipe, cell, row, out_dir, final=True)


def finished_fit(run_dir: Path):
    """The FitResult of the cell's fit when it finished (a checkpoint, not stopped by Ctrl-C or a
    requeue), else None."""
    from stuffed_mamba.training.result import read_result

    r = read_result(run_dir)
    return r if r is not None and r.checkpoint is not None and not (r.interrupted or r.requeued) else None


def _record(recipe, cell, row, out_dir, *, final: bool) -> dict[str, Any]:
    append_row(results_path(recipe, out_dir), row)
    if final:
        (cell.run_dir / "result.json").write_text(json.dumps(row, indent=1))
    return row


def _state_size(base: Path, cell: Cell) -> int:
    """N_S of the cell's model section as `fit` resolves it (base recipe + the cell's overrides)."""
    import dataclasses

    from stuffed_mamba.analysis.state_size import resolve

    section = dataclasses.asdict(resolved_config(base, cell.overrides).model)
    return resolve(section, base_dir=base.parent).state_size


def run_sweep(
    recipe: SweepRecipe,
    base: Path,
    cells: list[Cell],
    *,
    out_dir: str | Path | None = None,
    force: bool = False,
    in_process: bool = False,
    reevaluate: bool = False,
    log: Callable[[str], None] = print,
) -> list[dict[str, Any]]:
    rows = []
    t0 = time.perf_counter()
    if recipe.reshard is not None:
        from stuffed_mamba.sweep.reshard import reshard

        r = recipe.reshard
        done = reshard(r.source, r.out, r.shards)
        if not done["skipped"]:
            log(
                f"[sweep] re-sharded {r.source} into {r.out}: {done['documents']} documents, "
                f"{done['shards']} shards ({done['bad']} unreadable skipped)"
            )
    for i, cell in enumerate(cells):
        log(f"[sweep] cell {i + 1}/{len(cells)} ({time.perf_counter() - t0:.0f} s elapsed)")
        rows.append(
            run_cell(
                recipe, base, cell, out_dir=out_dir, force=force, in_process=in_process, reevaluate=reevaluate, log=log
            )
        )
    log(f"[sweep] {len(cells)} cells in {time.perf_counter() - t0:.0f} s")
    return rows
