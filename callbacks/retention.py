"""RetentionCallback: first-token retention alpha_{1:t} per layer and head (eq. 6, figure 3)."""

from __future__ import annotations

from typing import Callable, Optional, Sequence

from .base import ProbeCallback


class RetentionCallback(ProbeCallback):
    name = "retention"

    def __init__(
        self,
        probe_text: Callable[[], "torch.Tensor"],
        train_length: int,
        *,
        thresholds: Sequence[float] = (0.5, 0.9, 0.99),
        every_n_steps: int = 500,
        time_budget_s: float = 300.0,
        run_dir: Optional[str] = None,
    ):
        """probe_text: called once on rank 0, returns the probe token ids [n, T]."""
        super().__init__(every_n_steps=every_n_steps, time_budget_s=time_budget_s, run_dir=run_dir)
        self._probe_text, self._ids, self._load_error = probe_text, None, None
        self.train_length = int(train_length)
        self.thresholds = [float(x) for x in thresholds]

    def run_probe(self, model, deadline):
        from stuffed_mamba.probes.retention import first_token_retention

        if self._ids is None:
            if self._load_error is not None:  # do not rescan the corpus at every probe
                raise RuntimeError(self._load_error)
            try:
                self._ids = self._probe_text()
            except Exception as e:
                self._load_error = f"cannot load the probe text: {type(e).__name__}: {e}"
                raise RuntimeError(self._load_error) from None
        device = next(model.parameters()).device
        return first_token_retention(model, self._ids.to(device)).cpu()  # [L, H, T]

    def log_result(self, writer, alpha, step):
        from stuffed_mamba.probes.plots import figure_to_image, retention_curves
        from stuffed_mamba.probes.retention import retention_summary

        summary = retention_summary(alpha, self.train_length, thresholds=self.thresholds)
        if writer is not None:
            for where, s in summary["at"].items():
                writer.add_scalar(f"probes/retention/max_alpha/{where}", s["max"], step)
                for th, count in s["heads_above"].items():
                    writer.add_scalar(f"probes/retention/heads_above_{th}/{where}", count, step)
            img = figure_to_image(retention_curves(alpha, self.train_length))
            writer.add_image("probes/retention/curves", img, step, dataformats="HWC")
        return summary

    @classmethod
    def layout(cls):
        return {
            "first-token retention, max over heads": ["Multiline", [r"probes/retention/max_alpha/.*"]],
            "heads retaining the first token": ["Multiline", [r"probes/retention/heads_above_.*"]],
        }
