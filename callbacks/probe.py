"""One callback class for every registered probe: run it, log its scalars and figures, keep its summary.

The probe's inputs (prompt ids, evaluation text) are built once, on rank 0: by `fit` before
training (`prepare_inputs`), else at the first run; a failure to build them is remembered so
that the corpus is not rescanned at every run.
"""

from __future__ import annotations

from typing import Any

from stuffed_mamba.probes.registry import Context, Probe, as_config, get

from .base import ProbeCallback


class RegistryProbeCallback(ProbeCallback):
    """Runs `probe` every `cfg.every_n_steps` optimiser steps (see ProbeCallback)."""

    probe_name = ""

    def __init__(
        self,
        ctx: Context | None = None,
        cfg: Any = None,
        *,
        probe: Probe | None = None,
        run_dir: str | None = None,
        **overrides,
    ):
        """cfg: the probe's Config (or a dict of its fields); overrides: fields to replace."""
        self.probe = probe or get(self.probe_name)
        self.name = self.probe.name
        self.cfg = as_config(self.probe, cfg, **overrides)
        self.ctx = ctx or Context()
        super().__init__(every_n_steps=self.cfg.every_n_steps, time_budget_s=self.cfg.time_budget_s, run_dir=run_dir)
        self.probe.check(self.cfg, self.ctx)
        self._inputs, self._load_error = None, None

    def prepare_inputs(self) -> str | None:
        """Build the inputs now, once; returns the error that prevented it, if any. Reading the
        evaluation text can take minutes (HTTP): `fit` calls this on rank 0 before training, when
        no other rank is waiting for it in a collective."""
        if self._inputs is None and self._load_error is None:
            try:
                self._inputs = self.probe.inputs(self.cfg, self.ctx)
            except Exception as e:
                self._load_error = (
                    f"cannot build the {self.name} inputs (prompt or evaluation text): {type(e).__name__}: {e}"
                )
        return self._load_error

    def run_probe(self, model, deadline):
        if self.prepare_inputs() is not None:  # do not rescan the corpus at every probe
            raise RuntimeError(self._load_error)
        return self.probe.run(model, self._inputs, self.cfg, deadline)

    def log_result(self, writer, result, step):
        summary = self.probe.summary(result, self.cfg, self.ctx)
        if writer is not None:
            from stuffed_mamba.probes.plots import figure_to_image

            for tag, value in self.probe.scalars(summary).items():
                writer.add_scalar(f"probes/{self.name}/{tag}", value, step)
            for tag, fig in self.probe.figures(result, self.cfg, self.ctx).items():
                writer.add_image(f"probes/{self.name}/{tag}", figure_to_image(fig), step, dataformats="HWC")
        return summary

    def layout(self):
        return self.probe.layout


def _named(class_name: str, probe_name: str) -> type:
    return type(class_name, (RegistryProbeCallback,), {"probe_name": probe_name, "__module__": __name__})


# the four probes' callbacks under the names of the design's contract (DESIGN.md section 6); a new
# probe needs no class of its own: build_callbacks makes a RegistryProbeCallback for it
PasskeyCallback = _named("PasskeyCallback", "passkey")
RetentionCallback = _named("RetentionCallback", "retention")
StateStatsCallback = _named("StateStatsCallback", "states")
PositionLossCallback = _named("PositionLossCallback", "position_loss")
_BY_PROBE = {c.probe_name: c for c in (PasskeyCallback, RetentionCallback, StateStatsCallback, PositionLossCallback)}


def callback_for(probe: Probe, cfg: Any, ctx: Context, *, run_dir: str | None = None) -> RegistryProbeCallback:
    cls = _BY_PROBE.get(probe.name, RegistryProbeCallback)
    return cls(ctx, cfg, probe=probe, run_dir=run_dir)
