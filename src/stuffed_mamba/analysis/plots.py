"""PNG plots of a sweep: figure 11 (T_forget vs N_S), figure 9 (T_recall vs N_S), figure 10 (loss vs position)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from stuffed_mamba.analysis.fits import _Law, unit_name
from stuffed_mamba.analysis.thresholds import Threshold


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, never a display
    import matplotlib.pyplot as plt

    return plt


def _law_curve(ax, law: _Law, xs: np.ndarray, label: str, color: str, band: bool) -> None:
    ax.plot(xs, law.predict(xs), color=color, label=label)
    if band:
        lo, hi = law.band(xs)
        if np.all(np.isfinite(lo)):
            ax.fill_between(xs, lo, hi, color=color, alpha=0.2, label="95% confidence band")


def plot_forget_law(
    ths: Sequence[Threshold],
    path: str | Path,
    *,
    fit: _Law | None = None,
    paper: _Law | None = None,
    x_unit: float = 1e6,
    y_unit: float = 1e3,
    criterion: str = "paper",
) -> Path:
    """Every run as a point (filled: learned to forget, cross: did not), T_forget per N_S, and the laws."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4.2))
    for th in ths:
        x = th.state_size / x_unit
        for t, ok in th.runs:
            if ok is None:
                continue
            ax.scatter(
                [x], [t / y_unit], marker="o" if ok else "x", s=28, color="tab:green" if ok else "tab:red", zorder=3
            )
        if th.t_forget is not None and th.censored != "no_data":
            marker = {"none": "D", "above": "^", "at_or_below": "v"}[th.censored]
            ax.scatter(
                [x], [th.t_forget / y_unit], marker=marker, s=90, facecolors="none", edgecolors="black", zorder=4
            )
    xs_data = [th.state_size / x_unit for th in ths] or [0.0, 1.0]
    lo, hi = min(xs_data), max(xs_data)
    xs = np.linspace(lo - 0.1 * (hi - lo + 1e-9), hi + 0.1 * (hi - lo + 1e-9), 200)
    if fit is not None:
        _law_curve(ax, fit, xs, f"fit: {fit.formula()}  (R^2 = {fit.r2:.3f})", "tab:blue", band=True)
    if paper is not None:
        _law_curve(ax, paper, xs, f"paper: {paper.formula()}", "tab:gray", band=False)
    # legend entries for the markers
    ax.scatter([], [], marker="o", color="tab:green", label="learned to forget")
    ax.scatter([], [], marker="x", color="tab:red", label="did not learn to forget")
    ax.scatter(
        [], [], marker="D", facecolors="none", edgecolors="black", label="T_forget (^ above / v at or below the sweep)"
    )
    ax.set_xlabel(f"state size N_S ({unit_name(x_unit)} floats)".replace("( ", "("))
    ax.set_ylabel(f"training length T_train ({unit_name(y_unit)} tokens)".replace("( ", "("))
    how = (
        "loss beyond T_train < 2x max within (sec. 4.2)"
        if criterion == "paper"
        else f"late loss rise <= {criterion[5:]} nats"
    )
    ax.set_title(f"Forget threshold vs state size (paper fig. 11)\nlearned to forget: {how}", fontsize=10)
    ax.legend(fontsize=7, loc="best")
    ax.grid(alpha=0.3)
    return _save(fig, plt, path)


def plot_recall_law(
    ths: Sequence[Threshold],
    path: str | Path,
    *,
    fit: _Law | None = None,
    paper: _Law | None = None,
    x_unit: float = 1e6,
    y_unit: float = 1e3,
) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4.2))
    pts = [(th.state_size / x_unit, th.t_recall / y_unit) for th in ths if th.t_recall is not None]
    none = [th.state_size / x_unit for th in ths if th.t_recall is None]
    if pts:
        ax.scatter(*zip(*pts, strict=True), color="black", zorder=3, label="T_recall (>= 95% passkey accuracy)")
    if none:
        ax.scatter(none, [0.0] * len(none), marker="x", color="tab:red", zorder=3, label="no tested length reached 95%")
    xs_data = [th.state_size / x_unit for th in ths] or [0.0, 1.0]
    lo, hi = min(xs_data), max(xs_data)
    xs = np.linspace(lo - 0.1 * (hi - lo + 1e-9), hi + 0.1 * (hi - lo + 1e-9), 200)
    if fit is not None:
        _law_curve(ax, fit, xs, f"fit: {fit.formula()}  (R^2 = {fit.r2:.3f})", "tab:blue", band=True)
    if paper is not None:
        _law_curve(ax, paper, xs, f"paper: {paper.formula()}", "tab:gray", band=False)
    ax.set_xlabel(f"state size N_S ({unit_name(x_unit)} floats)".replace("( ", "("))
    ax.set_ylabel(f"T_recall ({unit_name(y_unit)} tokens)".replace("( ", "("))
    ax.set_title("Maximum recall context vs state size (paper fig. 9)")
    ax.legend(fontsize=7, loc="best")
    ax.grid(alpha=0.3)
    return _save(fig, plt, path)


def plot_position_loss(curves: Sequence[dict[str, Any]], path: str | Path, *, title: str = "") -> Path:
    """Loss vs token position per run (paper fig. 10), T_train as a dotted line in the run's colour.

    curves: dicts with `label`, `positions` (1-based token positions), `loss`, `train_length`,
    and optionally `learned_to_forget`.
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for i, c in enumerate(curves):
        color = plt.cm.viridis(0.85 * i / max(len(curves) - 1, 1))  # the pale end is unreadable
        style = "-" if c.get("learned_to_forget", True) else "--"
        ax.plot(c["positions"], c["loss"], style, color=color, label=c["label"], lw=1.2)
        ax.axvline(c["train_length"], color=color, ls=":", lw=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("token position")
    ax.set_ylabel("LM loss (nats)")
    ax.set_title(title or "Loss vs position (dashed: did not learn to forget; dotted: T_train)")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    return _save(fig, plt, path)


def _save(fig, plt, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
