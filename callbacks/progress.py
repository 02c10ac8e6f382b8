"""The training progress bar: optimiser steps toward `trainer.max_steps` with an ETA, continuing
from the resumed step.

Lightning's bar counts batches (episodes here, S optimiser steps each) from 0 after a resume,
has no total for a streamed loader, and shows the logger's version cut to "oard"."""

from __future__ import annotations

from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.callbacks.progress.tqdm_progress import _update_n


class StepProgressBar(TQDMProgressBar):
    def on_train_start(self, trainer, pl_module) -> None:
        super().on_train_start(trainer, pl_module)
        self.on_train_epoch_start(trainer)  # a resume inside the epoch skips the epoch-start hook

    def on_train_epoch_start(self, trainer, *_) -> None:
        bar = self.train_progress_bar
        if bar.disable:
            return
        # set in place (tqdm's reset() would draw a 0/total first); `initial`: the rate and ETA
        # count this job's steps only
        bar.total = trainer.max_steps if trainer.max_steps > 0 else None
        bar.initial = bar.n = bar.last_print_n = trainer.global_step
        bar.start_t = bar.last_print_t = bar._time()
        bar.set_description("optimiser steps", refresh=False)
        bar.refresh()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        _update_n(self.train_progress_bar, trainer.global_step)
        self.train_progress_bar.set_postfix(self.get_metrics(trainer, pl_module))

    def get_metrics(self, trainer, pl_module):
        metrics = super().get_metrics(trainer, pl_module)
        metrics.pop("v_num", None)
        return metrics
