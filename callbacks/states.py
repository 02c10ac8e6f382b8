"""StateStatsCallback: mean/variance of every head's SSM state on the "newlines" prompt (section 3.3)."""

from __future__ import annotations

from typing import Optional

from .base import ProbeCallback


class StateStatsCallback(ProbeCallback):
    name = "states"

    def __init__(
        self,
        tokenizer,
        train_length: int,
        *,
        length: int,
        n_points: int = 32,
        prefill_chunk: int = 4096,
        every_n_steps: int = 500,
        time_budget_s: float = 300.0,
        run_dir: Optional[str] = None,
    ):
        super().__init__(every_n_steps=every_n_steps, time_budget_s=time_budget_s, run_dir=run_dir)
        self.tokenizer = tokenizer
        self.train_length, self.length = int(train_length), int(length)
        self.n_points, self.prefill_chunk = int(n_points), int(prefill_chunk)

    def run_probe(self, model, deadline):
        from stuffed_mamba.probes.states import newlines_prompt, state_statistics, time_points

        device = next(model.parameters()).device
        ids = newlines_prompt(self.tokenizer, self.length).to(device)
        points = time_points(self.length, self.n_points, self.train_length)
        return state_statistics(model, ids, points, max_chunk=self.prefill_chunk, deadline=deadline)

    def log_result(self, writer, stats, step):
        from stuffed_mamba.probes.plots import figure_to_image, state_curves
        from stuffed_mamba.probes.states import state_summary

        summary = state_summary(stats, self.train_length)
        if writer is not None:
            for key in ("var_growth_max", "mean_growth_max", "var_max", "conv_var_growth_max"):
                if summary.get(key) is not None:
                    writer.add_scalar(f"probes/states/{key}", summary[key], step)
            writer.add_image("probes/states/curves", figure_to_image(state_curves(stats, self.train_length)), step,
                             dataformats="HWC")
        return summary

    @classmethod
    def layout(cls):
        return {"state growth past T_train": ["Multiline", [r"probes/states/.*growth.*", r"probes/states/var_max"]]}
