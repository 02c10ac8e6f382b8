"""Checkpoints at episode boundaries: `{run.dir}/checkpoints/last.ckpt` (contract) and optional history.

Not Lightning's `ModelCheckpoint`: with per-segment optimiser steps `global_step`
advances by S per batch, so its `global_step % N == 0` test misses most multiples
of N. Here a checkpoint is saved at the first episode boundary at or past each
multiple of N, and at the end of training.

Written beside its final name (`last.ckpt.tmp`), sealed with its manifest (sizes and digests,
`stuffed_mamba.model.integrity`: a file's in its zip comment, a folder's in the marker file
`stuffed_mamba_complete`), then renamed over it. A file is replaced by one atomic rename. A
DeepSpeed checkpoint is a folder, which a rename cannot put over a non-empty folder, so it takes
two (`last.ckpt` -> `last.ckpt.old`, `.tmp` -> `last.ckpt`); a kill between them leaves no
`last.ckpt`. Hence the marker, written into the folder after every rank's shard is on disk, and a
resume that looks for the newest complete one: a marked `.tmp` (killed between the renames: it is
newer than `.old`), else `last.ckpt`, else `.old`. The next save first promotes a marked `.tmp` to
`last.ckpt`, so the newest complete checkpoint is never deleted before a newer one is complete.

`run.resume=auto` then verifies: it takes the newest candidate that proves it is whole (those three,
then the kept `step-*.ckpt`, newest step first), says in one line which and how many steps a damaged
newer one cost, and refuses to start a run over whose checkpoints are all damaged.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import lightning as L

from stuffed_mamba.model.integrity import (
    FOLDER_MANIFEST,
    CheckpointDamaged,
    has_manifest,
    manifest_step,
    seal_file,
    seal_folder,
    verify_checkpoint,
)

LAST = "last.ckpt"
COMPLETE = FOLDER_MANIFEST  # the manifest inside a checkpoint folder, written last (marks it complete)
_KEPT = re.compile(r"step-(\d+)\.ckpt")
_ADVICE = "resume from another checkpoint (run.resume=PATH) or start over (run.resume=null run.overwrite=true)"


def checkpoint_dir(run_dir: str | os.PathLike) -> Path:
    return Path(run_dir) / "checkpoints"


def resolve_resume(resume: str | None, run_dir: str | os.PathLike, say: Callable[[str], None] = print) -> str | None:
    """`run.resume`: "auto" -> the newest intact checkpoint of the run (`newest_intact`), else start
    fresh; a path -> it, if intact; None -> fresh. A damaged one is a one-line `ConfigError`."""
    from stuffed_mamba.training.config import ConfigError

    if resume is None:
        return None
    if resume == "auto":
        return newest_intact(checkpoint_dir(run_dir), say)
    if not Path(resume).exists():
        raise ConfigError(f"run.resume: checkpoint not found: {resume}")
    try:
        verify_checkpoint(resume)
    except CheckpointDamaged as e:
        raise ConfigError(f"run.resume: {e}; {_ADVICE}") from None
    return resume


def resume_candidates(ckpt_dir: Path) -> list[Path]:
    """Every checkpoint a resume could continue from, newest first: `latest_complete`'s order
    (a marked `.tmp`, `last.ckpt`, `.old`), then the kept `step-*.ckpt`; ordered by the step their
    manifests record where known (a `step-*.ckpt` copied at the same save as `last.ckpt` ranks
    above a `.old`)."""
    last = ckpt_dir / LAST
    tmp, old = _tmp(last), _old(last)
    chain = [p for p in (tmp if is_complete(tmp) else None, last, old) if p is not None and p.exists()]
    kept = sorted((p for p in ckpt_dir.glob("step-*.ckpt") if _KEPT.fullmatch(p.name)), reverse=True)
    steps = {p: step_of(p) for p in chain + kept}
    return sorted(chain + kept, key=lambda p: -steps[p] if steps[p] is not None else float("-inf"))


def step_of(p: Path) -> int | None:
    """The step a checkpoint's manifest records, else a `step-N.ckpt` name's N."""
    step = manifest_step(p)
    m = _KEPT.fullmatch(p.name)
    return step if step is not None else (int(m.group(1)) if m else None)


def newest_intact(ckpt_dir: Path, say: Callable[[str], None] = print) -> str | None:
    """`run.resume=auto`: the newest candidate that verifies. Falling back past a damaged one is
    said in one line; a run whose candidates are all damaged is refused (never restarted silently)."""
    from stuffed_mamba.training.config import ConfigError

    damaged: list[tuple[Path, str]] = []
    for p in resume_candidates(ckpt_dir):
        try:
            verify_checkpoint(p)
        except CheckpointDamaged as e:
            damaged.append((p, str(e)))
            continue
        if damaged:
            say(f"run.resume=auto: {_damaged_summary(damaged)}; resuming from {p}{_lost(damaged, p)}")
        return str(p)
    if damaged:
        raise ConfigError(
            f"run.resume=auto: no intact checkpoint in {ckpt_dir}: {_damaged_summary(damaged)}; {_ADVICE}"
        )
    return None


def _damaged_summary(damaged: list[tuple[Path, str]]) -> str:
    more = f" (and {len(damaged) - 1} more damaged: {', '.join(p.name for p, _ in damaged[1:])})"
    return damaged[0][1] + (more if len(damaged) > 1 else "")


def _lost(damaged: list[tuple[Path, str]], chosen: Path) -> str:
    have = step_of(chosen)
    newest = max((s for s in (step_of(p) for p, _ in damaged) if s is not None), default=None)
    if have is None:
        return " (its step is not recorded: how many steps are lost is unknown)"
    if newest is None:
        return f" at step {have}: the steps after it are lost (the damaged one's step is unreadable)"
    return f" at step {have}: {max(newest - have, 0)} optimiser step(s) lost"


def latest_complete(path: Path) -> Path | None:
    """The newest complete checkpoint among `path` and the leftovers of an interrupted replacement:
    a marked `path.tmp` (a marked one is always the newest: it is renamed to `path` next),
    `path` (only ever made by a rename of a complete one), `path.old` (a complete `path` set aside)."""
    tmp, old = _tmp(path), _old(path)
    for candidate in (tmp if is_complete(tmp) else None, path, old):
        if candidate is not None and candidate.exists():
            return candidate
    return None


def is_complete(p: Path) -> bool:
    """Sealed: a folder with its manifest (or an earlier version's marker), a file with its manifest."""
    return has_manifest(p) if p.exists() else False


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
            seal_folder(tmp, trainer.global_step)
            _promote(path)
        else:
            seal_file(tmp, trainer.global_step)
            os.replace(tmp, path)
    trainer.strategy.barrier("stuffed_mamba.save.done")


def _promote(path: Path) -> None:
    """A marked `.tmp` replaces `path` in two renames; `latest_complete` covers a kill between."""
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
    if is_complete(tmp):
        _promote(path)
    elif not path.exists() and old.exists():
        os.replace(old, path)
    _remove(tmp)  # an incomplete one: a kill during the write
    _remove(old)


def _test_hook(moment: str) -> None:
    """Tests stop a save at a given moment by patching this (tests/scripts/ds_kill.py)."""


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
