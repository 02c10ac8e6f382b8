#!/usr/bin/env python
"""Issue 12's experiment side by side: the same cells trained as one segment, as 8 segments under
truncated BPTT and under full BPTT (docs/results.md, "Full BPTT").

    python scripts/compare_bptt.py --out docs/results/bptt_cpu \\
        "one segment=runs/sweeps/bptt_one_segment_cpu" \\
        "8 segments, truncated=runs/sweeps/bptt_truncated_cpu" \\
        "8 segments, full=runs/sweeps/bptt_full_cpu"

Reads each sweep's results.jsonl (the last row per cell) and runs/<cell>/eval/position_loss.json
(the sweep's evaluation); prints a markdown table and writes one loss-vs-position plot per cell,
--out/position_loss_<cell>.png (dotted: T_train; dash-dotted: the episode, S x T_train).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from stuffed_mamba.analysis.results import read_results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("sweeps", nargs="+", metavar="LABEL=SWEEP_DIR")
    ap.add_argument("--out", required=True, help="folder for the plots")
    args = ap.parse_args()
    variants = [tuple(s.split("=", 1)) for s in args.sweeps]
    rows = {
        label: {r["cell"]: r for r in read_results(Path(d) / "results.jsonl")[0] if r.get("status") == "ok"}
        for label, d in variants
    }
    cells = sorted({c for by_cell in rows.values() for c in by_cell}, key=lambda c: (len(c), c))
    print(
        "| cell | training | B x S x T | gradient horizon | fit s | final train loss | loss [T/2, T) "
        "| loss 6144-8191 | late loss rise | max beyond / max within |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for cell in cells:
        curves = []
        for label, d in variants:
            r = rows[label].get(cell)
            if r is None:
                continue
            S, T, s = int(r["segments"]), int(r["train_length"]), _summary(d, cell)
            horizon = S * T if _bptt(d, cell) == "full" else T
            print(
                f"| {cell} | {label} | {r['batch_size']} x {S} x {T} | {horizon} | {r['fit_seconds']:.0f} "
                f"| {r['final_train_loss']:.3f} | {s['loss_near_train_length']:.3f} | {s['loss_late']:.3f} "
                f"| {s['late_loss_rise']:+.3f} | {r['position_loss/beyond_over_within']:.2f} |"
            )
            curves.append((label, s["bucket_positions"], s["bucket_loss"], T, S))
        if curves:
            print(f"plot: {_plot(cell, curves, Path(args.out))}", flush=True)


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
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"position_loss_{cell}.png"
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


if __name__ == "__main__":
    main()
