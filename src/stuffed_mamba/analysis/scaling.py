"""`analyze scaling`: thresholds per state size from a results table, the two laws fitted, plots.

Only uncensored thresholds enter the fits; the linear law needs two state sizes, the
exponential one three (and a fourth before it has a confidence band).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stuffed_mamba.analysis.fits import (
    PAPER_T_FORGET,
    PAPER_T_RECALL,
    PAPER_UNITS,
    ExponentialLaw,
    LinearLaw,
    fit_exponential,
    fit_linear,
    pick_unit,
)
from stuffed_mamba.analysis.results import T_RECALL, column, read_results, write_csv
from stuffed_mamba.analysis.thresholds import Threshold, thresholds


@dataclass
class ScalingReport:
    rows: list[dict[str, Any]]
    skipped: int
    thresholds: list[Threshold]
    x_unit: float
    y_unit: float
    forget_fit: LinearLaw | None = None
    recall_fit: ExponentialLaw | None = None
    notes: list[str] = field(default_factory=list)
    plots: list[Path] = field(default_factory=list)
    criterion: str = "paper"

    def as_dict(self) -> dict[str, Any]:
        def law(l):
            if l is None:
                return None
            return {
                "formula": l.formula(),
                "params": dict(zip(param_names(l), l.params, strict=True)),
                "stderr": dict(zip(param_names(l), l.stderr(), strict=True)),
                "r2": l.r2,
                "n": l.n,
                "x_unit": l.x_unit,
                "y_unit": l.y_unit,
            }

        return {
            "n_rows": len(self.rows),
            "skipped_rows": self.skipped,
            "criterion": self.criterion,
            "units": {"state_size": self.x_unit, "length": self.y_unit},
            "thresholds": [t.as_dict() for t in self.thresholds],
            "forget_fit": law(self.forget_fit),
            "recall_fit": law(self.recall_fit),
            "paper_prediction": [
                {
                    "state_size": t.state_size,
                    "t_forget": float(PAPER_T_FORGET.tokens(t.state_size)),
                    "t_recall": float(PAPER_T_RECALL.tokens(t.state_size)),
                }
                for t in self.thresholds
            ],
            "notes": self.notes,
            "plots": [str(p) for p in self.plots],
        }


def param_names(law) -> tuple[str, ...]:
    """The names of `law.params`, in order."""
    return ("a", "c", "b") if isinstance(law, ExponentialLaw) else ("a", "b")


def analyze(
    results: str | Path,
    out_dir: str | Path | None = None,
    *,
    units: str = "auto",
    plots: bool = True,
    criterion: str = "paper",
) -> ScalingReport:
    """criterion: "paper" (learned_to_forget, section 4.2) or "rise:X" (see thresholds.verdict)."""
    rows, skipped = read_results(results)
    rows = [r for r in rows if r.get("status", "ok") == "ok"]
    if not rows:
        raise ValueError(f"{results}: no usable rows ({skipped} skipped, failed runs left out)")
    ths = thresholds(rows, criterion)
    if units == "paper":
        x_unit, y_unit = PAPER_UNITS
    elif units == "auto":
        x_unit = pick_unit([r["state_size"] for r in rows])
        y_unit = pick_unit([r["train_length"] for r in rows])
    else:
        raise ValueError(f"units must be auto or paper, not {units!r}")
    rep = ScalingReport(rows, skipped, ths, x_unit, y_unit, criterion=criterion)

    exact = [t for t in ths if t.censored == "none"]
    for t in ths:
        if t.censored == "above":
            rep.notes.append(f"N_S={t.state_size}: no run learned to forget; T_forget > {t.t_forget}")
        elif t.censored == "at_or_below":
            rep.notes.append(f"N_S={t.state_size}: even the shortest run learned to forget; T_forget <= {t.t_forget}")
        elif t.censored == "no_data":
            rep.notes.append(f"N_S={t.state_size}: no run has a learned_to_forget verdict")
        if not t.monotone:
            rep.notes.append(
                f"N_S={t.state_size}: not monotone in T_train (runs {t.runs}); T_forget taken from the longest runs"
            )
    if len(exact) >= 2:
        rep.forget_fit = fit_linear(
            [t.state_size / x_unit for t in exact], [t.t_forget / y_unit for t in exact], x_unit=x_unit, y_unit=y_unit
        )
    else:
        rep.notes.append(f"T_forget law not fitted: {len(exact)} state size(s) with an exact threshold, 2 needed")
    recall = [t for t in ths if t.t_recall is not None]
    if len(recall) >= 3:
        try:
            rep.recall_fit = fit_exponential(
                [t.state_size / x_unit for t in recall],
                [t.t_recall / y_unit for t in recall],
                x_unit=x_unit,
                y_unit=y_unit,
            )
        except ValueError as e:
            rep.notes.append(f"T_recall law not fitted: {e}")
    else:
        rep.notes.append(f"T_recall law not fitted: {len(recall)} state size(s) with a T_recall, 3 needed")

    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        if plots:
            from stuffed_mamba.analysis.plots import plot_forget_law, plot_recall_law

            # the paper's laws only mean something at the paper's scale (N_S of millions)
            in_paper_range = x_unit >= 1e6
            paper_f = _rescaled(PAPER_T_FORGET, x_unit, y_unit) if in_paper_range else None
            paper_r = _rescaled(PAPER_T_RECALL, x_unit, y_unit) if in_paper_range else None
            rep.plots.append(
                plot_forget_law(
                    ths,
                    out / "forget_law.png",
                    fit=rep.forget_fit,
                    paper=paper_f,
                    x_unit=x_unit,
                    y_unit=y_unit,
                    criterion=criterion,
                )
            )
            if any(t.t_recall is not None for t in ths) or any(column(r, T_RECALL) is not None for r in rows):
                rep.plots.append(
                    plot_recall_law(
                        ths, out / "recall_law.png", fit=rep.recall_fit, paper=paper_r, x_unit=x_unit, y_unit=y_unit
                    )
                )
            rep.plots.extend(_position_loss_plots(results, rows, out))
        write_csv(rows, out / "results.csv")
        (out / "scaling.json").write_text(json.dumps(rep.as_dict(), indent=2, default=_jsonable))
    return rep


def _position_loss_plots(results, rows, out: Path) -> list[Path]:
    """Figure 10 per model size, from the runs' position_loss.json (when the sweep folder has them)."""
    from stuffed_mamba.analysis.plots import plot_position_loss

    root = Path(results)
    root = root if root.is_dir() else root.parent
    by_model: dict[str, list[dict[str, Any]]] = {}
    for r in sorted(rows, key=lambda r: int(r["train_length"])):
        run = root / "runs" / str(r.get("cell"))
        f = next((p for p in (run / "eval" / "position_loss.json", run / "position_loss.json") if p.is_file()), None)
        if r.get("cell") and f is not None:
            c = json.loads(f.read_text())
            if "bucket_loss" in c:  # the probe's summary (older sweeps saved the curve alone)
                c = {
                    "positions": c["bucket_positions"],
                    "loss": c["bucket_loss"],
                    "train_length": c["train_length"],
                    "learned_to_forget": c["learned_to_forget"],
                }
            c["label"] = f"T_train={r['train_length']}"
            by_model.setdefault(str(r.get("model")), []).append(c)
    return [
        plot_position_loss(
            curves,
            out / f"position_loss_{model}.png",
            title=f"{model} (N_S = {next(int(r['state_size']) for r in rows if str(r.get('model')) == model):,}): "
            "loss vs position",
        )
        for model, curves in by_model.items()
    ]


def _rescaled(law, x_unit: float, y_unit: float):
    """The same law expressed in other units (only for plotting next to a fit)."""
    sx, sy = x_unit / law.x_unit, law.y_unit / y_unit
    if isinstance(law, LinearLaw):
        return LinearLaw(a=law.a * sx * sy, b=law.b * sy, x_unit=x_unit, y_unit=y_unit, source=law.source)
    return ExponentialLaw(a=law.a * sy, c=law.c**sx, b=law.b * sy, x_unit=x_unit, y_unit=y_unit, source=law.source)


def _jsonable(v):
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if hasattr(v, "item"):
        return v.item()
    return str(v)
