"""PositionLossCallback: LM loss per position past T_train, and whether the model learned to forget."""

from __future__ import annotations

from typing import Callable, Optional

from .base import ProbeCallback


class PositionLossCallback(ProbeCallback):
    name = "position_loss"

    def __init__(
        self,
        eval_text: Callable[[], "torch.Tensor"],
        train_length: int,
        *,
        buckets: int = 24,
        prefill_chunk: int = 4096,
        every_n_steps: int = 500,
        time_budget_s: float = 600.0,
        run_dir: Optional[str] = None,
    ):
        """eval_text: called once on rank 0, returns the evaluation token ids [n, T]."""
        super().__init__(every_n_steps=every_n_steps, time_budget_s=time_budget_s, run_dir=run_dir)
        self._eval_text, self._ids, self._load_error = eval_text, None, None
        self.train_length, self.buckets, self.prefill_chunk = int(train_length), int(buckets), int(prefill_chunk)

    def run_probe(self, model, deadline):
        from stuffed_mamba.probes.position_loss import loss_per_position

        if self._ids is None:
            if self._load_error is not None:  # do not rescan the corpus at every probe
                raise RuntimeError(self._load_error)
            try:
                self._ids = self._eval_text()
            except Exception as e:
                self._load_error = f"cannot load the evaluation text: {type(e).__name__}: {e}"
                raise RuntimeError(self._load_error) from None
        return loss_per_position(model, self._ids, chunk_size=self.prefill_chunk, deadline=deadline)

    def log_result(self, writer, loss, step):
        from stuffed_mamba.probes.plots import figure_to_image, loss_vs_position
        from stuffed_mamba.probes.position_loss import loss_summary

        summary = loss_summary(loss, self.train_length, buckets=self.buckets)
        if writer is not None:
            for key in ("max_within", "max_beyond", "mean_within", "mean_beyond", "beyond_over_within"):
                if summary.get(key) is not None:
                    writer.add_scalar(f"probes/position_loss/{key}", summary[key], step)
            writer.add_scalar("probes/position_loss/learned_to_forget", float(summary["learned_to_forget"]), step)
            for centre, value in zip(summary["bucket_positions"], summary["bucket_loss"]):
                writer.add_scalar(f"probes/position_loss/bucket/t={centre}", value, step)
            img = figure_to_image(loss_vs_position(loss, self.train_length, buckets=self.buckets))
            writer.add_image("probes/position_loss/curve", img, step, dataformats="HWC")
        return summary

    @classmethod
    def layout(cls):
        return {
            "loss within vs beyond T_train": ["Multiline", [r"probes/position_loss/(max|mean)_.*",
                                                             r"probes/position_loss/beyond_over_within"]],
            "learned to forget": ["Multiline", [r"probes/position_loss/learned_to_forget"]],
            "loss by position": ["Multiline", [r"probes/position_loss/bucket/.*"]],
        }
