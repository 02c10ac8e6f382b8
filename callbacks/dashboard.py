"""The TensorBoard custom-scalars layout "forgetting" that groups every probe's curves."""

from __future__ import annotations

import os
import re
from collections.abc import Iterable

import lightning as L

from .base import ProbeCallback, tensorboard_writer

LAYOUT_NAME = "forgetting"


def forgetting_layout(callbacks: Iterable[ProbeCallback]) -> dict:
    """{"forgetting": {chart title: ["Multiline", [tag regexes]]}} for `SummaryWriter.add_custom_scalars`."""
    charts: dict = {}
    for cb in callbacks:
        charts.update(cb.layout())
    return {LAYOUT_NAME: charts}


def one_chart_per_series(layout: dict, tags: Iterable[str]) -> dict:
    """The layout with every chart that matches several of `tags` split into one chart per tag.

    TensorBoard draws the series of one run in one colour (told apart only by marker shape, with no
    legend): a chart of the accuracy at four lengths read as one tangled line."""
    tags = sorted(tags, key=_natural)
    out: dict = {}
    for name, charts in layout.items():
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
    series, once every probe has run and its tags are known."""

    def __init__(self, probe_callbacks: list[ProbeCallback]):
        self.probe_callbacks = list(probe_callbacks)
        self._split = False

    def on_fit_start(self, trainer, pl_module) -> None:
        if not trainer.is_global_zero or not self.probe_callbacks:
            return
        writer = tensorboard_writer(trainer)
        if writer is not None:
            writer.add_custom_scalars(forgetting_layout(self.probe_callbacks))
            writer.flush()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        # after the probes' own batch-end hooks (this callback comes last)
        if self._split or not trainer.is_global_zero:
            return
        if any(cb.last_result is None for cb in self.probe_callbacks):
            return
        tags = set()
        for cb in self.probe_callbacks:
            try:
                tags |= {f"probes/{cb.name}/{t}" for t in cb.probe.scalars(cb.last_result)}
            except (AttributeError, KeyError, TypeError):
                continue
        writer = tensorboard_writer(trainer)
        if writer is not None and tags:
            writer.add_custom_scalars(one_chart_per_series(forgetting_layout(self.probe_callbacks), tags))
            writer.flush()
        self._split = True
