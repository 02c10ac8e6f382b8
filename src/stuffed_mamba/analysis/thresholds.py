"""T_forget and T_recall of each state size, read off a sweep's results table (section 4.2, 4.3).

T_forget(N_S) is the shortest training length at which the model learns to forget: the
paper's law says it learns iff T_train >= T_forget, so we take the smallest swept T_train
from which every longer swept T_train learned too. When no run of a state size learned,
T_forget is only known to lie above the longest swept length ("above"); when even the
shortest learned, only below it ("at_or_below"). Censored thresholds are reported and
plotted but not fitted. A sweep that contradicts the law (a run that forgets below one that
does not) is flagged `monotone=False`.

T_recall(N_S) is the longest context with >= 95% passkey accuracy of the best run of that
state size (appendix F.1 selects checkpoints by passkey validation).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from stuffed_mamba.analysis.results import LATE_LOSS_RISE, LEARNED_TO_FORGET, T_RECALL, column


@dataclass
class Threshold:
    state_size: int
    model: str
    t_forget: int | None  # tokens; the bound when censored
    censored: str  # "none" | "above" | "at_or_below" | "no_data"
    monotone: bool
    t_recall: int | None  # tokens; None when no run reached 95% at any tested length
    runs: list[tuple[int, bool | None]] = field(default_factory=list)  # (T_train, learned_to_forget)

    def as_dict(self) -> dict[str, Any]:
        return {
            "state_size": self.state_size,
            "model": self.model,
            "t_forget": self.t_forget,
            "censored": self.censored,
            "monotone": self.monotone,
            "t_recall": self.t_recall,
            "runs": [list(r) for r in self.runs],
        }


def parse_criterion(criterion: str) -> float | None:
    """None for "paper" (the row's learned_to_forget), X for "rise:X"."""
    if criterion == "paper":
        return None
    if criterion.startswith("rise:"):
        try:
            return float(criterion[5:])
        except ValueError:
            pass
    raise ValueError(f"criterion must be 'paper' or 'rise:X' (X in nats), not {criterion!r}")


def verdict(row: dict[str, Any], criterion: str = "paper") -> bool | None:
    """Did this run learn to forget?

    "paper": the row's `learned_to_forget` (section 4.2: the loss beyond T_train never exceeds
    2x the maximum loss within it). "rise:X": the mean loss over the last quarter of the
    evaluation context exceeds the mean loss over [T_train/2, T_train) by at most X nats
    (`late_loss_rise`), a softer test for losses that keep creeping up without doubling.
    """
    x = parse_criterion(criterion)
    if x is None:
        return _bool(column(row, LEARNED_TO_FORGET))
    rise = column(row, LATE_LOSS_RISE)
    return None if rise in (None, "") else float(rise) <= x


def thresholds(rows: Iterable[dict[str, Any]], criterion: str = "paper") -> list[Threshold]:
    """One Threshold per state size, sorted by N_S."""
    parse_criterion(criterion)
    groups: dict[int, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault(int(r["state_size"]), []).append(r)
    return [_threshold(n_s, rs, criterion) for n_s, rs in sorted(groups.items())]


def _threshold(n_s: int, rows: list[dict[str, Any]], criterion: str) -> Threshold:
    names = sorted({str(r.get("model")) for r in rows if r.get("model")})
    runs = sorted((int(r["train_length"]), verdict(r, criterion)) for r in rows)
    known = [(t, ok) for t, ok in runs if ok is not None]
    # 0 = no tested length reached 95%: no point, like an empty cell
    recalls = [int(v) for v in (column(r, T_RECALL) for r in rows) if v not in (None, "", 0)]
    t_recall = max(recalls) if recalls else None
    if not known:
        return Threshold(n_s, "/".join(names), None, "no_data", True, t_recall, runs)
    # smallest T such that every swept T' >= T learned
    t_forget = None
    for t, ok in reversed(known):
        if not ok:
            break
        t_forget = t
    first_true = next((i for i, (_, ok) in enumerate(known) if ok), None)
    monotone = first_true is None or all(ok for _, ok in known[first_true:])
    if t_forget is None:
        censored, t_forget = "above", known[-1][0]
    elif t_forget == known[0][0]:
        censored = "at_or_below"
    else:
        censored = "none"
    return Threshold(n_s, "/".join(names), t_forget, censored, monotone, t_recall, runs)


def _bool(v) -> bool | None:
    if v is None or v == "":
        return None
    if isinstance(v, str):
        return v.strip().lower() in ("true", "1", "yes")
    return bool(v)
