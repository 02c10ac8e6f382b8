"""Checkpoints at episode boundaries: `{run.dir}/checkpoints/last.ckpt` (contract) and optional history.

Not Lightning's `ModelCheckpoint`: with per-segment optimiser steps `global_step`
advances by S per batch, so its `global_step % N == 0` test misses most multiples
of N. Here a checkpoint is saved at the first episode boundary at or past each
multiple of N, and at the end of training.

Written beside its final name (`last.ckpt.tmp`) and renamed over it. A file is replaced
by one atomic rename. A DeepSpeed checkpoint is a folder, which a rename cannot put
over a non-empty folder, so it takes two (`last.ckpt` -> `last.ckpt.old`, `.tmp` ->
`last.ckpt`); a kill between them leaves no `last.ckpt`. Hence a completeness marker,
written into the folder after every rank's shard is on disk, and a resume that looks
for the newest complete one: `last.ckpt`, else a marked `.tmp` (killed between the
renames: it is newer than `.old`), else `.old`. The next save first promotes a marked
`.tmp` to `last.ckpt`, so the newest complete checkpoint is never deleted before a
newer one is complete.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import lightning as L

LAST = "last.ckpt"
COMPLETE = "stuffed_mamba_complete"  # marker file inside a checkpoint folder, written last


def checkpoint_dir(run_dir: str | os.PathLike) -> Path:
    return Path(run_dir) / "checkpoints"


def resolve_resume(resume: str | None, run_dir: str | os.PathLike) -> str | None:
    """`run.resume`: "auto" -> the newest complete checkpoint of the run (`latest_complete`), else
    start fresh; a path -> it; None -> fresh."""
    if resume is None:
        return None
    if resume == "auto":
        found = latest_complete(checkpoint_dir(run_dir) / LAST)
        return str(found) if found is not None else None
    if not Path(resume).exists():
        from stuffed_mamba.training.config import ConfigError

        raise ConfigError(f"run.resume: checkpoint not found: {resume}")
    return resume


def latest_complete(path: Path) -> Path | None:
    """The newest complete checkpoint among `path` and the leftovers of an interrupted replacement:
    a marked `path.tmp` folder (a marked one is always the newest: it is renamed to `path` next),
    `path` (only ever made by a rename of a complete one), `path.old` (a complete `path` set aside)."""
    tmp, old = _tmp(path), _old(path)
    for candidate in (tmp if is_complete_folder(tmp) else None, path, old):
        if candidate is not None and candidate.exists():
            return candidate
    return None


def is_complete_folder(p: Path) -> bool:
    return p.is_dir() and (p / COMPLETE).is_file()


def _tmp(path: Path) -> Path:
    return path.with_name(path.name + ".tmp")


def _old(path: Path) -> Path:
    return path.with_name(path.name + ".old")


def save_atomically(trainer: L.Trainer, path: Path) -> None:
    """All ranks call this together (DeepSpeed writes one shard per rank; under DDP rank 0 writes)."""
    tmp = _tmp(path)
    if trainer.is_global_zero:
        _settle(path)
    trainer.strategy.barrier("stuffed_mamba.save.clean")
    trainer.save_checkpoint(tmp)  # ends with a barrier: every shard is on disk
    if trainer.is_global_zero:
        if tmp.is_dir():  # a DeepSpeed checkpoint is a folder; rename cannot replace a non-empty one
            _write_marker(tmp, trainer.global_step)
            _promote(path)
        else:
            os.replace(tmp, path)
    trainer.strategy.barrier("stuffed_mamba.save.done")


def _promote(path: Path) -> None:
    """A marked `.tmp` folder replaces `path` in two renames; `latest_complete` covers a kill between."""
    tmp, old = _tmp(path), _old(path)
    _remove(old)
    if path.exists():
        os.replace(path, old)
    _test_hook("between_renames")
    os.replace(tmp, path)
    _remove(old)


def _settle(path: Path) -> None:
    """Finish a replacement a kill interrupted, then clear the way for a new `.tmp`: the newest
    complete checkpoint becomes `path` before anything is deleted."""
    tmp, old = _tmp(path), _old(path)
    if is_complete_folder(tmp):
        _promote(path)
    elif not path.exists() and old.exists():
        os.replace(old, path)
    _remove(tmp)  # an incomplete one: a kill during the write
    _remove(old)


def _write_marker(folder: Path, step: int) -> None:
    with open(folder / COMPLETE, "w") as f:
        f.write(f"global_step {step}\n")
        f.flush()
        os.fsync(f.fileno())


def _test_hook(moment: str) -> None:
    """Tests stop a save at a given moment by patching this (tests/training/ds_kill.py)."""


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
                partial = kept.with_name(kept.name + ".tmp")  # a kill mid-copy leaves no half step-*.ckpt
                _remove(partial)
                (shutil.copytree if self.last_path.is_dir() else shutil.copy2)(self.last_path, partial)
                _remove(kept)
                os.replace(partial, kept)
            trainer.strategy.barrier("stuffed_mamba.save.keep")
        self._last_saved = step
        self.saved_steps.append(step)
        return True
