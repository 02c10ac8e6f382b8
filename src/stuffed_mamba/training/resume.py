"""What a start checks before it touches `run.dir`, and what it records once it has succeeded.

Before: the checkpoint to resume is whole (`checkpoint.resolve_resume` verifies it against its
manifest, `model/integrity.py`) and readable (one line naming the file otherwise), the run
is not already finished at `trainer.max_steps`, the architecture is the one it was trained
with, and which other recipe keys changed since (listed in the start-up report). After the
checkpoint was restored (`on_train_start`): `{run.dir}/recipe.yaml`, the hyper-parameters
of a fresh run, and TensorBoard events cut at the resumed step (the steps after the
checkpoint are logged again, and must not appear twice). Every checkpoint carries the
recipe that wrote it (`checkpoint["recipe"]`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import lightning as L

from stuffed_mamba.training.config import ConfigError

# keys that say how to start, not what is trained; and the probes' group defaults (newer than some
# saved recipes), whose effect shows in each probe's own keys
_START_KEYS = {"run.resume", "run.overwrite", "probes.every_n_steps", "probes.prefill_chunk"}
# Mamba2Config fields that change how the model computes, not what it is
_NOT_ARCHITECTURE = {"chunk_size"}


@dataclass
class ResumePoint:
    path: str
    global_step: int
    mamba2_config: dict | None
    recipe: dict | None  # the recipe of the run that wrote it (in the checkpoint, else {run.dir}/recipe.yaml)
    counters: dict  # the training module's: episodes_done, tokens_seen, nonfinite_total


def read_resume_point(path: str) -> ResumePoint:
    """The step, architecture and recipe of a checkpoint, read without its tensors (memory-mapped)."""
    from stuffed_mamba.model.io import read_checkpoint_dict

    p = Path(path)
    try:
        ckpt = read_checkpoint_dict(p)  # verified; tensors memory-mapped (a folder: DeepSpeed's client state)
    except Exception as e:  # noqa: BLE001 - a truncated or foreign file raises many kinds
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ConfigError(
            f"run.resume: cannot read {path} ({first[:160]}): the file is damaged or not a checkpoint of "
            f"stuffed-mamba fit; resume from another one (run.resume=PATH, e.g. a kept step-*.ckpt) or start over "
            f"(run.resume=null run.overwrite=true)"
        ) from None
    if not isinstance(ckpt, dict) or "global_step" not in ckpt:
        raise ConfigError(
            f"run.resume: {path} is not a checkpoint of stuffed-mamba fit (no global_step); "
            f"resume from another one or start over (run.resume=null run.overwrite=true)"
        )
    recipe = ckpt.get("recipe")
    if recipe is None:
        saved = p.parent.parent / "recipe.yaml"  # {run.dir}/checkpoints/last.ckpt
        if saved.is_file():
            from omegaconf import OmegaConf

            recipe = OmegaConf.to_container(OmegaConf.load(saved), resolve=True)
    return ResumePoint(
        str(path), int(ckpt["global_step"]), ckpt.get("mamba2_config"), recipe, dict(ckpt.get("tbptt") or {})
    )


def check_architecture(point: ResumePoint, config) -> None:
    """Refuse to resume a checkpoint of another architecture (Lightning would fail on a size mismatch)."""
    if point.mamba2_config is None:
        return
    now = config.to_dict()
    changed = [
        k
        for k in sorted(set(now) | set(point.mamba2_config))
        if k not in _NOT_ARCHITECTURE and _norm(now.get(k)) != _norm(point.mamba2_config.get(k))
    ]
    if changed:
        was = ", ".join(f"{k}={point.mamba2_config.get(k)}" for k in changed)
        new = ", ".join(f"{k}={now.get(k)}" for k in changed)
        raise ConfigError(
            f"run.resume: {point.path} was trained with {was}, the recipe now gives {new}: the architecture cannot "
            f"change on resume; restore those model keys, or choose another run.dir (or run.resume=null "
            f"run.overwrite=true) to start over"
        )


def recipe_changes(saved: dict | None, now: dict) -> list[str]:
    """`key: old -> new` for every recipe key that differs from the run's saved recipe."""
    if not saved:
        return []
    a, b = _flat(saved), _flat(now)
    return [
        f"{k}: {a.get(k)} -> {b.get(k)}"
        for k in sorted(set(a) | set(b))
        if k not in _START_KEYS and _norm(a.get(k)) != _norm(b.get(k))
    ]


def _norm(v):
    return list(v) if isinstance(v, tuple) else v


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def hyperparameters(recipe: dict) -> dict:
    """The recipe as TensorBoard's hyper-parameters: flat keys, values a scalar or their text."""
    return {k: v if isinstance(v, (int, float, str, bool)) or v is None else str(v) for k, v in _flat(recipe).items()}


class RecordRun(L.Callback):
    """Writes what a successful start leaves in run.dir, once the checkpoint has been restored."""

    def __init__(
        self,
        run_dir: str,
        recipe_yaml: str,
        recipe: dict,
        *,
        resumed_step: int | None,
    ):
        self.run_dir = Path(run_dir)
        self.recipe_yaml = recipe_yaml
        self.recipe = recipe
        self.resumed_step = resumed_step

    def on_train_start(self, trainer, pl_module) -> None:
        if trainer.is_global_zero:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / "recipe.yaml").write_text(self.recipe_yaml)
            if self.resumed_step is not None:
                cut_events(self.run_dir / "tensorboard", self.resumed_step)
        if trainer.logger is not None and self.resumed_step is None:
            trainer.logger.log_hyperparams(hyperparameters(self.recipe))

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        checkpoint["recipe"] = self.recipe


def cut_events(log_dir: Path, step: int) -> int:
    """Drop the events after `step` from the TensorBoard files in `log_dir` (rewritten in place);
    returns how many were dropped. Steps up to the checkpoint's are kept: they are not logged again."""
    import os

    files = sorted(log_dir.glob("events.out.tfevents.*")) if log_dir.is_dir() else []
    if not files:
        return 0
    from tensorboard.backend.event_processing.event_file_loader import RawEventFileLoader
    from tensorboard.compat.proto import event_pb2
    from tensorboard.summary.writer.record_writer import RecordWriter

    dropped = 0
    for f in files:
        kept, before = [], dropped
        for raw in RawEventFileLoader(str(f)).Load():
            event = event_pb2.Event.FromString(raw)
            if event.step > step and not event.HasField("file_version"):
                dropped += 1
            else:
                kept.append(raw)
        if dropped == before:
            continue
        tmp = f.with_name(f.name + ".tmp")
        with open(tmp, "wb") as out:
            writer = RecordWriter(out)
            for raw in kept:
                writer.write(raw)
            writer.flush()
        os.replace(tmp, f)
    return dropped
