"""Checkpoints at episode boundaries: `{run.dir}/checkpoints/last.ckpt` (contract) and optional history.

Not Lightning's `ModelCheckpoint`: with per-segment optimiser steps `global_step`
advances by S per batch, so its `global_step % N == 0` test misses most multiples
of N. Here a checkpoint is saved at the first episode boundary at or past each
multiple of N, and at the end of training. The file is written beside its final
name and renamed over it, so a job killed mid-save leaves the previous
`last.ckpt` intact.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import lightning as L

LAST = "last.ckpt"


def checkpoint_dir(run_dir: str | os.PathLike) -> Path:
    return Path(run_dir) / "checkpoints"


def resolve_resume(resume: str | None, run_dir: str | os.PathLike) -> str | None:
    """`run.resume`: "auto" -> last.ckpt if it exists (else start fresh), a path -> it, None -> fresh."""
    if resume is None:
        return None
    if resume == "auto":
        last = checkpoint_dir(run_dir) / LAST
        return str(last) if last.exists() else None
    if not Path(resume).exists():
        from stuffed_mamba.training.config import ConfigError

        raise ConfigError(f"run.resume: checkpoint not found: {resume}")
    return resume


def save_atomically(trainer: "L.Trainer", path: Path) -> None:
    """All ranks call this together (DeepSpeed writes one shard per rank; under DDP rank 0 writes)."""
    tmp = path.with_name(path.name + ".tmp")
    if trainer.is_global_zero and tmp.exists():
        _remove(tmp)
    trainer.strategy.barrier("stuffed_mamba.save.clean")
    trainer.save_checkpoint(tmp)  # ends with a barrier: every shard is on disk
    if trainer.is_global_zero:
        if tmp.is_dir():  # a DeepSpeed checkpoint is a folder; rename cannot replace a non-empty one
            old = path.with_name(path.name + ".old")
            if path.exists():
                _remove(old)
                os.replace(path, old)
            os.replace(tmp, path)
            _remove(old)
        else:
            os.replace(tmp, path)
    trainer.strategy.barrier("stuffed_mamba.save.done")


def _remove(p: Path) -> None:
    if p.is_dir():
        shutil.rmtree(p)
    elif p.exists():
        p.unlink()


class EpisodeCheckpoint(L.Callback):
    """Save `last.ckpt` every `every_n_steps` optimiser steps (at episode boundaries) and at the end;
    with `keep_every_n_steps`, also keep `step-NNNNNNN.ckpt` copies."""

    def __init__(self, dirpath: str | os.PathLike, every_n_steps: int, keep_every_n_steps: int | None = None):
        self.dirpath = Path(dirpath)
        self.every_n_steps = every_n_steps
        self.keep_every_n_steps = keep_every_n_steps
        self._last_saved = 0
        self.saved_steps: list[int] = []

    @property
    def last_path(self) -> Path:
        return self.dirpath / LAST

    def on_train_start(self, trainer, pl_module) -> None:
        self._last_saved = trainer.global_step  # restored by now on resume
        if trainer.is_global_zero:
            self.dirpath.mkdir(parents=True, exist_ok=True)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        due = step // self.every_n_steps > self._last_saved // self.every_n_steps
        # The final save happens here, at the last batch end, not in on_train_end: by then
        # Lightning has marked the epoch finished, and a resume would stop at once.
        last = 0 < trainer.max_steps <= step or trainer.should_stop
        if due or (last and step != self._last_saved):
            self.save(trainer, pl_module)

    def on_train_end(self, trainer, pl_module) -> None:
        # only when the data ran out before max_steps (the epoch did end)
        if trainer.global_step != self._last_saved or not self.last_path.exists():
            self.save(trainer, pl_module)

    def save_unless_current(self, trainer, pl_module) -> bool:
        """For the requeue handler: last.ckpt may already be this step's (saved a moment ago)."""
        if trainer.global_step == self._last_saved and self.last_path.exists():
            return True
        return self.save(trainer, pl_module)

    def save(self, trainer, pl_module) -> bool:
        # While non-finite steps are being skipped, keep the checkpoint from before the first one.
        if getattr(pl_module, "nonfinite_streak", 0) > 0:
            return False
        step = trainer.global_step
        save_atomically(trainer, self.last_path)
        if self.keep_every_n_steps and step // self.keep_every_n_steps > self._last_saved // self.keep_every_n_steps:
            if trainer.is_global_zero:
                kept = self.dirpath / f"step-{step:07d}.ckpt"
                (shutil.copytree if self.last_path.is_dir() else shutil.copy2)(self.last_path, kept)
            trainer.strategy.barrier("stuffed_mamba.save.keep")
        self._last_saved = step
        self.saved_steps.append(step)
        return True
