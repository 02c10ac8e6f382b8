"""Plain-text tables of probe results (printed by `stuffed-mamba eval` and saved beside the JSON)."""

from __future__ import annotations

from collections.abc import Sequence


def fmt_len(T: int | None) -> str:
    if not T:
        return "-"
    if T % (1 << 20) == 0:
        return f"{T >> 20}M"
    if T % 1024 == 0:
        return f"{T // 1024}K"
    return str(T)


def render(header: Sequence[str], rows: Sequence[Sequence], title: str = "") -> str:
    cells = [[str(h) for h in header]] + [["-" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    line = lambda r: "  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True))  # noqa: E731
    out = [title] if title else []
    out += [line(cells[0]), "  ".join("-" * w for w in widths)] + [line(r) for r in cells[1:]]
    return "\n".join(out)


def _pct(x: float | None) -> str | None:
    return None if x is None else f"{100 * x:.0f}%"


def passkey_table(result, last_r: Sequence[int] = (1024, 2048, 4096, 8192), title: str = "") -> str:
    acc = result.accuracy()
    depths = sorted({d for ds in acc.values() for d in ds})
    header = ["length"] + [f"d={d:.2f}" for d in depths] + ["mean"] + [f"last {fmt_len(r)}" for r in last_r]
    by_len = result.accuracy_by_length()
    rows = [
        [fmt_len(T)]
        + [_pct(acc[T].get(d)) for d in depths]
        + [_pct(by_len[T])]
        + [_pct(result.last_r_accuracy(r, T)) for r in last_r]
        for T in acc
    ]
    t = render(header, rows, title)
    note = "" if result.complete else " (time budget reached: sweep incomplete)"
    return f"{t}\nT_recall (longest length with >= 95% accuracy): {fmt_len(result.t_recall())}{note}"


def retention_table(summary: dict, title: str = "") -> str:
    pts = list(summary["at"])
    header = ["layer"] + [f"max alpha {p}" for p in pts]
    L = summary["n_layer"]
    rows = [[l] + [f"{summary['at'][p]['max_per_layer'][l]:.4f}" for p in pts] for l in range(L)]
    t = render(header, rows, title)
    counts = "; ".join(
        f"{p}: " + ", ".join(f"{n} heads > {th}" for th, n in summary["at"][p]["heads_above"].items()) for p in pts
    )
    return f"{t}\nheads retaining the first token (of {L * summary['nheads']}): {counts}"


def states_table(summary: dict, title: str = "") -> str:
    per_layer_growth = summary.get("var_growth_per_layer")
    header = ["layer", "max var at end", "max var growth past T_train"]
    rows = [
        [l, f"{v:.3g}", None if per_layer_growth is None else f"{per_layer_growth[l]:.3g}x"]
        for l, v in enumerate(summary["var_max_per_layer"])
    ]
    t = render(header, rows, title)
    lines = [t]
    for o in summary.get("outliers", []):
        top = ", ".join(f"(p={c['p']},n={c['n']}) z={c['z']:.1f}" for c in o["top"][:4])
        lines.append(
            f"layer {o['layer']} head {o['head']}: variance x{o['var_growth']:.3g} past T_train; top "
            f"{100 * o['top_fraction']:.0f}% of channels hold {100 * o['share_of_sq_deviation']:.0f}% of the "
            f"squared deviation; outliers {top}"
        )
    return "\n".join(lines)
