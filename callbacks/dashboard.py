"""The TensorBoard custom-scalars layout "forgetting" that groups every probe's curves."""

from __future__ import annotations

from typing import Iterable

import lightning as L

from .base import ProbeCallback, tensorboard_writer

LAYOUT_NAME = "forgetting"


def forgetting_layout(callbacks: Iterable[ProbeCallback]) -> dict:
    """{"forgetting": {chart title: ["Multiline", [tag regexes]]}} for `SummaryWriter.add_custom_scalars`."""
    charts: dict = {}
    for cb in callbacks:
        charts.update(cb.layout())
    return {LAYOUT_NAME: charts}


class ForgettingDashboard(L.Callback):
    """Writes the "forgetting" layout once per fit, on rank 0, before any probe runs."""

    def __init__(self, probe_callbacks: list[ProbeCallback]):
        self.probe_callbacks = list(probe_callbacks)

    def on_fit_start(self, trainer, pl_module) -> None:
        if not trainer.is_global_zero or not self.probe_callbacks:
            return
        writer = tensorboard_writer(trainer)
        if writer is not None:
            writer.add_custom_scalars(forgetting_layout(self.probe_callbacks))
            writer.flush()
