"""`analyze scaling`'s text: a ScalingReport as the terminal report and as Markdown tables."""

from __future__ import annotations

from stuffed_mamba.analysis.fits import unit_name
from stuffed_mamba.analysis.results import LATE_LOSS_RISE, LEARNED_TO_FORGET, T_RECALL, column
from stuffed_mamba.analysis.scaling import ScalingReport, param_names


def format_report(rep: ScalingReport) -> str:
    xu, yu = unit_name(rep.x_unit), unit_name(rep.y_unit)
    lines = [
        f"{len(rep.rows)} runs"
        + (f" ({rep.skipped} unusable rows skipped)" if rep.skipped else "")
        + f"; learned to forget by criterion: {rep.criterion}",
        "",
    ]
    runs = {
        t.state_size: " ".join(f"{tt}{'+' if ok else ('-' if ok is False else '?')}" for tt, ok in t.runs)
        for t in rep.thresholds
    }
    w = max([len("runs: T_train (+ forgets)")] + [len(r) for r in runs.values()])
    lines.append(f"{'N_S':>12} {'model':<14} {'runs: T_train (+ forgets)':<{w}} {'T_forget':>10} {'T_recall':>9}")
    for t in rep.thresholds:
        tf = (
            "n/a"
            if t.t_forget is None
            else {"none": "", "above": ">", "at_or_below": "<="}[t.censored] + str(t.t_forget)
        )
        tr = "none" if t.t_recall is None else str(t.t_recall)
        lines.append(f"{t.state_size:>12,} {t.model[:14]:<14} {runs[t.state_size]:<{w}} {tf:>10} {tr:>9}")
    lines.append("")
    for name, law in (("T_forget", rep.forget_fit), ("T_recall", rep.recall_fit)):
        if law is None:
            continue
        se = ", ".join(
            f"{n}={v:.4g}+-{s:.2g}" for n, v, s in zip(param_names(law), law.params, law.stderr(), strict=True)
        )
        lines.append(
            f"{name} fit (N_S in {(xu + ' floats').strip()}, T in {(yu + ' tokens').strip()}): {law.formula(4)}  R^2={law.r2:.4f}  n={law.n}  [{se}]"
        )
    for note in rep.notes:
        lines.append(f"note: {note}")
    for p in rep.plots:
        lines.append(f"plot: {p}")
    return "\n".join(lines)


def format_markdown(rep: ScalingReport) -> str:
    """The runs and thresholds as Markdown tables (for docs/results.md)."""
    from stuffed_mamba.analysis.thresholds import verdict

    def f(v, spec=".3f"):
        return "" if v is None else (format(v, spec) if isinstance(v, float) else str(v))

    out = [
        "| cell | N_S | T_train | steps | final train loss | max loss <= T_train | max loss > T_train | ratio "
        "| learned_to_forget (2x) | late loss rise | forgets by " + rep.criterion + " | passkey acc | T_recall |",
        "|" + "---|" * 13,
    ]
    for r in sorted(rep.rows, key=lambda r: (int(r["state_size"]), int(r["train_length"]))):
        acc = r.get("passkey_accuracy") or {
            k[len("passkey/acc/T=") :]: v for k, v in r.items() if k.startswith("passkey/acc/T=")
        }
        ltf = column(r, LEARNED_TO_FORGET)
        out.append(
            "| "
            + " | ".join(
                [
                    str(r.get("cell", "")),
                    f"{int(r['state_size']):,}",
                    str(r["train_length"]),
                    f(r.get("max_steps")),
                    f(r.get("final_train_loss")),
                    f(column(r, ("position_loss/max_within", "max_loss_within"))),
                    f(column(r, ("position_loss/max_beyond", "max_loss_beyond"))),
                    f(column(r, ("position_loss/beyond_over_within", "loss_ratio")), ".2f"),
                    f(None if ltf in (None, "") else bool(ltf)),
                    f(column(r, LATE_LOSS_RISE), "+.3f"),
                    f(verdict(r, rep.criterion)),
                    " ".join(f"{k}:{v:.2f}" for k, v in acc.items()),
                    f(column(r, T_RECALL)),
                ]
            )
            + " |"
        )
    out += ["", f"| N_S | runs (T_train, + forgets by {rep.criterion}) | T_forget | T_recall |", "|---|---|---|---|"]
    for t in rep.thresholds:
        runs = " ".join(f"{tt}{'+' if ok else ('-' if ok is False else '?')}" for tt, ok in t.runs)
        tf = (
            "n/a"
            if t.t_forget is None
            else {"none": "", "above": "> ", "at_or_below": "<= "}[t.censored] + str(t.t_forget)
        )
        out.append(f"| {t.state_size:,} | {runs} | {tf} | {t.t_recall if t.t_recall is not None else 'none'} |")
    return "\n".join(out)
