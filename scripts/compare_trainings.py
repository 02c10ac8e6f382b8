#!/usr/bin/env python
"""The same sweep cells trained in different ways, side by side: issue 12's one segment vs 8 segments
under truncated and full BPTT (docs/results.md, "Full BPTT"), issue 23's initial states
(docs/results.md, "Initial states").

    python scripts/compare_trainings.py --out docs/results/bptt_cpu \\
        "one segment=runs/sweeps/bptt_one_segment_cpu" \\
        "8 segments, truncated=runs/sweeps/bptt_truncated_cpu" \\
        "8 segments, full=runs/sweeps/bptt_full_cpu"

Reads each sweep's results.jsonl (the last row per cell) and runs/<cell>/eval/position_loss.json
(the sweep's evaluation); prints a markdown table and writes one loss-vs-position plot per cell,
--out/position_loss_<cell>.png (dotted: T_train; dash-dotted: the episode, S x T_train). Where the
cells were evaluated with the `effrem` probe too, the table gains EffRem_T(T/2) at each T and
--out/effrem_<cell>.png plots EffRem_T(t) against t/T at each T.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from stuffed_mamba import errors
from stuffed_mamba.analysis.results import read_results


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("sweeps", nargs="+", metavar="LABEL=SWEEP_DIR")
    ap.add_argument("--out", required=True, help="folder for the plots")
    args = ap.parse_args()
    if bad := [s for s in args.sweeps if "=" not in s]:
        ap.error(f"{bad[0]}: expected LABEL=SWEEP_DIR")
    try:
        compare([tuple(s.split("=", 1)) for s in args.sweeps], Path(args.out))
    except (OSError, ValueError) as e:  # a missing sweep folder, results table or evaluation file
        print(f"compare_trainings: error: {errors.first_line(e)}", file=sys.stderr)
        return 2
    return 0


def compare(variants: list[tuple[str, str]], out: Path) -> None:
    """The table on stdout and the plots in `out` (module docstring)."""
    rows = {
        label: {r["cell"]: r for r in read_results(Path(d) / "results.jsonl")[0] if r.get("status") == "ok"}
        for label, d in variants
    }
    cells = sorted({c for by_cell in rows.values() for c in by_cell}, key=lambda c: (len(c), c))
    multiples = _effrem_multiples(variants, rows)
    effrem_heads = "".join(f" | EffRem_T(T/2), T = {m} x T_train" for m in multiples)
    print(
        "| cell | training | B x S x T | gradient horizon | fit s | final train loss | loss [T/2, T) "
        f"| loss 6144-8191 | late loss rise | max beyond / max within{effrem_heads} |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|" + "---|" * len(multiples))
    for cell in cells:
        curves, effrems = [], []
        for label, d in variants:
            r = rows[label].get(cell)
            if r is None:
                continue
            S, T, s = int(r["segments"]), int(r["train_length"]), _summary(d, cell)
            horizon = S * T if _bptt(d, cell) == "full" else T
            e = _effrem(d, cell)
            at_half = "".join(
                f" {e['at_half'][str(m * T)]:.3f} |" if e and str(m * T) in e["at_half"] else " |" for m in multiples
            )
            print(
                f"| {cell} | {label} | {r['batch_size']} x {S} x {T} | {horizon} | {r['fit_seconds']:.0f} "
                f"| {r['final_train_loss']:.3f} | {s['loss_near_train_length']:.3f} | {s['loss_late']:.3f} "
                f"| {s['late_loss_rise']:+.3f} | {r['position_loss/beyond_over_within']:.2f} |{at_half}"
            )
            curves.append((label, s["bucket_positions"], s["bucket_loss"], T, S))
            if e:
                effrems.append((label, e))
        if curves:
            print(f"plot: {_plot(cell, curves, out)}", flush=True)
        if effrems:
            print(f"plot: {_plot_effrem(cell, effrems, out)}", flush=True)


def _effrem(sweep_dir: str, cell: str) -> dict | None:
    """The cell's `effrem` summary (runs/<cell>/eval/effrem.json), None where it was not evaluated."""
    path = Path(sweep_dir) / "runs" / cell / "eval" / "effrem.json"
    return json.loads(path.read_text()) if path.exists() else None


def _effrem_multiples(variants, rows) -> list[int]:
    """The T / T_train of every EffRem curve of any cell, increasing (the table's EffRem columns)."""
    found = set()
    for label, d in variants:
        for cell in rows[label]:
            e = _effrem(d, cell)
            if e:
                found |= {int(T) // int(e["train_length"]) for T in e["curves"]}
    return sorted(found)


def _summary(sweep_dir: str, cell: str) -> dict:
    return json.loads((Path(sweep_dir) / "runs" / cell / "eval" / "position_loss.json").read_text())


def _bptt(sweep_dir: str, cell: str) -> str:
    """The cell's optim.bptt as its fit resolved it (runs/<cell>/recipe.yaml)."""
    import yaml

    recipe = yaml.safe_load((Path(sweep_dir) / "runs" / cell / "recipe.yaml").read_text())
    return recipe.get("optim", {}).get("bptt", "truncated")


def _plot(cell: str, curves, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for i, (label, pos, loss, T, S) in enumerate(curves):
        color = f"C{i}"
        ax.plot(pos, loss, color=color, label=label, lw=1.3)
        if S > 1:
            ax.axvline(S * T, color=color, ls="-.", lw=0.8)
    ax.axvline(curves[0][3], color="gray", ls=":", lw=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("token position")
    ax.set_ylabel("LM loss (nats)")
    ax.set_title(f"{cell}: loss vs position (dotted: T_train; dash-dotted: S x T_train)", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, out / f"position_loss_{cell}.png")


def _plot_effrem(cell: str, effrems, out: Path) -> Path:
    """EffRem_T(t) against t/T, one panel per T, one line per training."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    Ts = sorted({int(T) for _, e in effrems for T in e["curves"]})
    fig, axes = plt.subplots(1, len(Ts), figsize=(3.6 * len(Ts), 3.4), sharey=True, squeeze=False)
    for ax, T in zip(axes[0], Ts, strict=True):
        for i, (label, e) in enumerate(effrems):
            c = e["curves"].get(str(T))
            if c:
                ax.plot([t / T for t in c["t"]], c["effrem"], marker="o", ms=3, color=f"C{i}", label=label, lw=1.2)
        ax.set_title(f"T = {T} ({T // effrems[0][1]['train_length']} x T_train)", fontsize=9)
        ax.set_xlabel("t / T: share of the context removed")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("EffRem_T(t)")
    axes[0][-1].legend(fontsize=7)
    fig.suptitle(f"{cell}: Effective Remembrance (TV of q(.|x_0..T) and q(.|x_t..T))", fontsize=10)
    return _save(fig, out / f"effrem_{cell}.png")


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


if __name__ == "__main__":
    sys.exit(main())
