"""What every probe callback shares: when to run, where, and how to leave training untouched.

A probe runs on global rank 0 only, every `every_n_steps` optimiser steps, with the model
in eval mode under `torch.no_grad()`; the other ranks wait at a barrier. It never touches
the optimiser or the dataloader, draws its randomness from its own `torch.Generator`,
restores every global RNG stream anyway, and restores the model's train/eval mode. Results go to TensorBoard (scalars
and images) and to `{run_dir}/probes/{name}/step_{step:08d}.json`.
"""

from __future__ import annotations

import json
import logging
import random
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch

log = logging.getLogger(__name__)


@contextmanager
def preserved_rng_state():
    """Save and restore Python, NumPy, torch CPU and CUDA RNG streams around a probe."""
    py, npy, cpu = random.getstate(), np.random.get_state(), torch.get_rng_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    try:
        yield
    finally:
        random.setstate(py)
        np.random.set_state(npy)
        torch.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)


def tensorboard_writer(trainer: L.Trainer):
    """The SummaryWriter of the trainer's TensorBoard logger, or None when there is none."""
    from lightning.pytorch.loggers import TensorBoardLogger

    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            return logger.experiment
    return None


class ProbeCallback(L.Callback):
    """Runs `self.run_probe(model, deadline)` every `every_n_steps` optimiser steps on rank 0.

    `global_step` can advance by several optimiser steps per `training_step` (one per
    segment), so a probe runs when the step crosses a multiple of `every_n_steps`, not only
    when it lands on one.
    """

    name = "probe"

    def __init__(self, *, every_n_steps: int, time_budget_s: float, run_dir: str | None = None):
        if every_n_steps < 1:
            raise ValueError(f"{type(self).__name__}: every_n_steps must be >= 1, got {every_n_steps}")
        self.every_n_steps = int(every_n_steps)
        self.time_budget_s = float(time_budget_s)
        self.run_dir = run_dir
        self._last_bucket: int | None = None
        self.last_result: dict | None = None  # the last probe's summary (rank 0), for tests and users
        self.failures, self.last_error = 0, None
        self.raise_errors = False  # tests set it so that a broken probe fails loudly
        self._warned_zero3 = False
        self._history: list[tuple[int, dict]] = []  # (step, summary) when there is no run_dir to read back

    # --- to implement per probe -------------------------------------------------------------
    def run_probe(self, model: torch.nn.Module, deadline: float) -> Any:
        """Run the probe on `model` (eval mode, no_grad, device of the model); return its result."""
        raise NotImplementedError

    def log_result(self, writer, result: Any, step: int) -> dict:
        """Write scalars/images to `writer` (may be None); return a JSON-able summary."""
        raise NotImplementedError

    @classmethod
    def layout(cls) -> dict[str, list]:
        """Custom-scalars charts of this probe: {chart title: ["Multiline", [tag regexes]]}."""
        return {}

    # --- Lightning hooks --------------------------------------------------------------------
    def on_train_start(self, trainer, pl_module) -> None:
        # a resumed run must not re-probe the step it resumed at
        self._last_bucket = trainer.global_step // self.every_n_steps

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        bucket = step // self.every_n_steps
        if self._last_bucket is None:
            self._last_bucket = 0
        if step == 0 or bucket <= self._last_bucket:
            return
        self._last_bucket = bucket
        self.run(trainer, pl_module)

    def run(self, trainer, pl_module) -> None:
        """Probe now on rank 0 while the other ranks wait; usable outside the schedule too."""
        if _is_zero3(trainer):
            if trainer.is_global_zero and not self._warned_zero3:  # once per run, not every interval
                log.warning("%s skipped: parameters are partitioned (ZeRO stage 3)", self.name)
                self._warned_zero3 = True
            return
        if trainer.is_global_zero:
            try:
                self._run_rank0(trainer, pl_module)
            except Exception as e:  # a probe must never end a multi-day run; say so and go on
                self.failures += 1
                self.last_error = f"{type(e).__name__}: {e}"
                log.error("probe %s failed at step %d: %s", self.name, trainer.global_step, self.last_error)
                if self.raise_errors:
                    raise
        trainer.strategy.barrier(f"stuffed_mamba_probe_{self.name}")

    def _run_rank0(self, trainer, pl_module) -> None:
        model = pl_module.model
        step = trainer.global_step
        was_training = model.training
        t0 = time.monotonic()
        with preserved_rng_state(), torch.no_grad():
            model.eval()
            try:
                result = self.run_probe(model, deadline=t0 + self.time_budget_s)
            finally:
                model.train(was_training)
            summary = self.log_result(tensorboard_writer(trainer), result, step)
        summary = {"step": step, "seconds": round(time.monotonic() - t0, 3), **summary}
        self.last_result = summary
        writer = tensorboard_writer(trainer)
        if writer is not None:
            writer.add_scalar(f"probes/{self.name}/seconds", summary["seconds"], step)
            writer.flush()
        out = None
        if self.run_dir is not None:
            out = Path(self.run_dir) / "probes" / self.name
            out.mkdir(parents=True, exist_ok=True)
            (out / f"step_{step:08d}.json").write_text(json.dumps(summary, indent=1))
        self._history.append((step, summary))
        with preserved_rng_state():
            self.log_over_training(writer, out, step)

    def history(self, step: int, out: Path | None) -> list[tuple[int, dict]]:
        """[(step, summary)] of every run so far, up to `step`: from the JSON files beside the run
        (so that a resumed run's figure holds the steps before the resume), else from memory."""
        if out is None:
            return [(s, r) for s, r in self._history if s <= step]
        runs = {}
        for f in sorted(out.glob("step_*.json")):
            s = int(f.stem.split("_")[1])
            if s <= step:  # later files belong to an attempt this run resumed from before
                runs[s] = json.loads(f.read_text())
        return sorted(runs.items())

    def log_over_training(self, writer, out: Path | None, step: int) -> None:
        """The probe's curve at every step so far in one figure (stuffed_mamba.probes.overlay):
        TensorBoard image `probes/<name>/over_training` and `over_training_step_<step>.png` beside the JSON."""
        from stuffed_mamba.probes import overlay
        from stuffed_mamba.probes.plots import figure_to_image

        train_length = getattr(getattr(self, "ctx", None), "train_length", None)
        fig = overlay.figure(self.name, self.history(step, out), train_length)
        if fig is None:
            return
        if out is not None:
            fig.savefig(out / f"over_training_step_{step:08d}.png", dpi=100)
        img = figure_to_image(fig)
        if writer is not None:
            writer.add_image(f"probes/{self.name}/over_training", img, step, dataformats="HWC")
            writer.flush()


def _is_zero3(trainer) -> bool:
    strategy = trainer.strategy
    return bool(getattr(strategy, "zero_stage_3", False))
