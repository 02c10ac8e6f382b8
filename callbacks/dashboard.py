"""The TensorBoard custom-scalars layout "forgetting" that groups every probe's curves."""

from __future__ import annotations

import os
import re
from collections.abc import Iterable

import lightning as L
from tensorboard.plugins.custom_scalar import layout_pb2

from .base import ProbeCallback, tensorboard_writer

LAYOUT_NAME = "forgetting"
# series the dashboard derives from the probes' summaries at each probe step (reference lines, ratios)
LIMIT_2X = "dashboard/learned_to_forget_limit_2x"
T_RECALL = "dashboard/T_recall_over_T_train"
MEDIAN_MEMORY = "dashboard/median_memory_over_T_train"
T_TRAIN = "dashboard/T_train_is_1"


def _fmt(T: int) -> str:
    return f"{T // 1024}K" if T >= 1024 and T % 1024 == 0 else str(T)


def _times(t: int, train_length: int) -> str:
    return f"{t / train_length:g}x T_train"


def first_section(callbacks: Iterable[ProbeCallback]) -> dict:
    """The charts a researcher reads first, 2 x 2: one screen of a laptop (TensorBoard draws two
    330 x 311 px cards per row beside its sidebar at 1366 and 1440 px): is the model learning to forget?

    {chart title: ["Multiline", [exact tag regex, ...]]}; the recipe's numbers (T_train, the longest
    passkey length, where retention is read) are in the titles. A chart's series share one scale
    (a ratio, lengths in units of T_train, fractions in [0, 1]); TensorBoard draws one run's series
    in one colour with one marker shape per tag, and names the tag in the tooltip."""
    by = {cb.name: cb for cb in callbacks}
    T_train = next((cb.ctx.train_length for cb in by.values() if getattr(cb, "ctx", None)), None)
    charts: dict = {}

    def chart(title: str, *tags: str) -> None:
        # TensorBoard applies re.match: "$" keeps acc/T=1024 from drawing acc/T=10240 too
        if tags:
            charts[title] = ["Multiline", [re.escape(t) + "$" for t in tags]]

    if "position_loss" in by:
        chart(
            "learned to forget? max loss beyond T_train / max within; no above the flat line at 2",
            "probes/position_loss/beyond_over_within",
            LIMIT_2X,
        )
    if T_train:
        chart(
            "how far back, in T_train: T_recall, median head memory 1/(1-alpha); flat line: 1 = T_train",
            *([T_RECALL] if "passkey" in by else []),
            *([MEDIAN_MEMORY] if "memory_lengths" in by else []),
            *([T_TRAIN] if {"passkey", "memory_lengths"} & set(by) else []),
        )
        kept, tags = [], []
        if "passkey" in by:
            cb = by["passkey"]
            longest = max(cb.probe.lengths(cb.cfg, cb.ctx))
            kept.append(f"passkey accuracy at {_fmt(longest)} = {_times(longest, T_train)}")
            tags.append(f"probes/passkey/acc/T={longest}")
        if "retention" in by:
            t = by["retention"].cfg.length or 4 * T_train  # the last summary point is the probe's length
            kept.append(f"first-token retention at {_fmt(t)} = {_times(t, T_train)} (max over heads)")
            tags.append(f"probes/retention/max_alpha/t={t}")
        chart("kept from far back (0 to 1): " + ", ".join(kept), *tags)
    if "states" in by:
        chart(
            "state variance growth past T_train (var_t / var_T_train, max over heads)", "probes/states/var_growth_max"
        )
    return charts


def references(cb: ProbeCallback) -> dict[str, float]:
    """The first section's derived series at the step the probe `cb` last ran (from its summary)."""
    s = cb.last_result or {}
    T_train = getattr(getattr(cb, "ctx", None), "train_length", None)
    out = {}
    if cb.name == "position_loss" and s.get("beyond_over_within") is not None:
        from stuffed_mamba.probes.position_loss import FORGET_LIMIT

        out[LIMIT_2X] = FORGET_LIMIT
    if T_train and cb.name == "passkey" and s.get("T_recall") is not None:
        out.update({T_RECALL: s["T_recall"] / T_train, T_TRAIN: 1.0})
    if T_train and cb.name == "memory_lengths" and s.get("tau_median") is not None:
        out.update({MEDIAN_MEMORY: s["tau_median"] / T_train, T_TRAIN: 1.0})
    return out


def forgetting_layout(callbacks: Iterable[ProbeCallback]) -> dict:
    """{category: {chart title: ["Multiline", [tag regexes]]}}: the first section ("forgetting"),
    then each probe's own charts (per length, per threshold) in a category of its own."""
    callbacks = list(callbacks)
    layout: dict = {LAYOUT_NAME: first_section(callbacks)}
    for cb in callbacks:
        if cb.layout():
            layout[f"{cb.name}: every series"] = dict(cb.layout())
    return layout


def write_layout(writer, layout: dict) -> None:
    """`writer.add_custom_scalars(layout)` with every category after the first closed: the first
    screen shows the first section, the detail is one click away."""
    from torch.utils.tensorboard.summary import custom_scalars

    summary = custom_scalars(layout)
    value = summary.value[0]
    proto = layout_pb2.Layout()
    proto.ParseFromString(value.tensor.string_val[0])
    for category in proto.category[1:]:
        category.closed = True
    value.tensor.string_val[0] = proto.SerializeToString()
    writer._get_file_writer().add_summary(summary)
    writer.flush()


def one_chart_per_series(layout: dict, tags: Iterable[str]) -> dict:
    """The layout with every chart that matches several of `tags` split into one chart per tag.

    TensorBoard draws the series of one run in one colour (told apart only by marker shape, with no
    legend): a chart of the accuracy at four lengths read as one tangled line."""
    tags = sorted(tags, key=_natural)
    out: dict = {}
    for name, charts in layout.items():
        if name == LAYOUT_NAME:  # the first section's series are chosen one by one, reference lines included
            out[name] = dict(charts)
            continue
        split: dict = {}
        for title, (kind, regexes) in charts.items():
            hits = [t for t in tags if any(re.fullmatch(r, t) for r in regexes)]
            if len(hits) <= 1:
                split[title] = [kind, regexes]
                continue
            prefix = os.path.commonprefix(hits)
            prefix = prefix[: prefix.rfind("/") + 1]
            for tag in hits:  # TensorBoard applies re.match (start-anchored only): without "$", t=1 draws t=13 too
                split[f"{title}: {tag[len(prefix) :]}"] = [kind, [re.escape(tag) + "$"]]
        out[name] = split
    return out


def _natural(tag: str):
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", tag)]


class ForgettingDashboard(L.Callback):
    """Writes the "forgetting" layout on rank 0 before any probe runs, and again, one chart per
    series in the detail categories, once every probe has run and its tags are known; after each
    probe run, the first section's derived series (ratios to T_train, the verdict's 2x) at that step."""

    def __init__(self, probe_callbacks: list[ProbeCallback]):
        self.probe_callbacks = list(probe_callbacks)
        self._split = False
        self._seen: dict[str, int] = {}
        self._written: set[tuple[str, int]] = set()

    def on_fit_start(self, trainer, pl_module) -> None:
        if not trainer.is_global_zero or not self.probe_callbacks:
            return
        writer = tensorboard_writer(trainer)
        if writer is not None:
            write_layout(writer, forgetting_layout(self.probe_callbacks))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        # after the probes' own batch-end hooks (this callback comes last)
        if not trainer.is_global_zero:
            return
        writer = tensorboard_writer(trainer)
        for cb in self.probe_callbacks:
            step = (cb.last_result or {}).get("step")
            if writer is None or step is None or self._seen.get(cb.name) == step:
                continue
            self._seen[cb.name] = step
            for tag, value in references(cb).items():
                if (tag, step) not in self._written:  # T_train's line comes from two probes
                    self._written.add((tag, step))
                    writer.add_scalar(tag, value, step)
        if self._split or any(cb.last_result is None for cb in self.probe_callbacks):
            return
        tags = set()
        for cb in self.probe_callbacks:
            try:
                tags |= {f"probes/{cb.name}/{t}" for t in cb.probe.scalars(cb.last_result)}
            except (AttributeError, KeyError, TypeError):
                continue
        if writer is not None and tags:
            write_layout(writer, one_chart_per_series(forgetting_layout(self.probe_callbacks), tags))
        self._split = True
