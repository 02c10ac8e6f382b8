"""`fit(cfg)`: recipe -> model, data, trainer -> train, torchtitan style (reads top to bottom)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from stuffed_mamba.errors import first_line
from stuffed_mamba.training.config import ConfigError, RecipeConfig, mamba2_overrides, to_dict, to_yaml
from stuffed_mamba.training.result import FitResult, already_complete, read_result, write_result
from stuffed_mamba.training.trainer import build_trainer, quiet_lightning

__all__ = ["FitResult", "build_model", "build_trainer", "fit", "read_result", "write_result"]


def build_model(cfg: RecipeConfig, tokenizer):
    """From `model.init_from` (official or transformers folder, or a hub name) or from scratch with `run.seed`."""
    from stuffed_mamba.model import Mamba2Config, Mamba2LM

    m = cfg.model
    overrides = mamba2_overrides(m)
    if m.init_from:
        try:  # a folder, or a hub name (OWNER/NAME) through the HuggingFace cache
            model = Mamba2LM.from_pretrained(m.init_from, backend=m.backend)
        except (OSError, ValueError, KeyError) as e:
            raise ConfigError(f"model.init_from: {first_line(e)}") from None
        for key, value in overrides.items():
            have = getattr(model.config, key)
            if have != value and key != "chunk_size":
                raise ConfigError(
                    f"model.{key}={value} conflicts with {m.init_from} ({key}={have}); drop it from the recipe"
                )
    else:
        overrides.setdefault("vocab_size", tokenizer.vocab_size)
        try:
            config = Mamba2Config(**overrides)
        except (ValueError, TypeError) as e:
            raise ConfigError(f"model: {e}") from None
        model = Mamba2LM(config, backend=m.backend)
    if tokenizer.vocab_size > model.config.vocab_size_padded:
        raise ConfigError(
            f"data.tokenizer has {tokenizer.vocab_size} tokens but the model's vocabulary holds "
            f"{model.config.vocab_size_padded}"
        )
    model.gradient_checkpointing = m.activation_checkpointing
    return model


def fit(
    cfg: RecipeConfig,
    *,
    recipe: str | None = None,
    loader_factory: Callable | None = None,
    extra_callbacks: Sequence = (),
    log: Callable[[str], None] = print,
) -> FitResult:
    import lightning as L
    from lightning.pytorch.utilities.rank_zero import rank_zero_only

    from stuffed_mamba.training import context_parallel
    from stuffed_mamba.training.checkpoint import EpisodeCheckpoint, checkpoint_dir
    from stuffed_mamba.training.datamodule import EpisodeDataModule
    from stuffed_mamba.training.module import TBPTTModule
    from stuffed_mamba.training.report import startup_report
    from stuffed_mamba.training.resume import check_architecture, recipe_changes

    say = rank_zero_only(log)
    quiet_lightning()
    run_dir = Path(cfg.run.dir)
    ckpt_dir = checkpoint_dir(run_dir)
    # Nothing in run.dir changes until the start has succeeded: the checks come first.
    resume_from, point = _resume_point(cfg, run_dir, ckpt_dir, say)
    if point is not None and point.global_step >= _max_steps(cfg):
        return already_complete(point, resume_from, run_dir)
    checkpoints = EpisodeCheckpoint(ckpt_dir, cfg.run.checkpoint_every_n_steps, cfg.run.keep_every_n_steps)
    requeue = _catch_requeue_signal(cfg, ckpt_dir, checkpoints)  # before anything slow: it can come any time
    if cfg.run.torch_threads:
        import torch

        torch.set_num_threads(cfg.run.torch_threads)

    # 1. tokenizer and model (same seed on every rank: identical initial weights)
    tokenizer = _tokenizer(cfg)
    L.seed_everything(cfg.run.seed, workers=False, verbose=False)
    context_parallel.install(cfg.trainer.context_parallel)  # the model's ops split over each group
    model = build_model(cfg, tokenizer)
    if point is not None:
        check_architecture(point, model.config)

    # 2. callbacks, trainer, module, data
    callbacks, interrupt = _callbacks(cfg, run_dir, ckpt_dir, point, checkpoints, requeue, tokenizer, extra_callbacks)
    trainer = build_trainer(cfg, callbacks)
    cp = cfg.trainer.context_parallel
    module = TBPTTModule(model, cfg.optim, log_every_n_steps=cfg.trainer.log_every_n_steps, context_parallel=cp)
    data = EpisodeDataModule(cfg.data, factory=loader_factory, context_parallel=cp)
    world_size = trainer.num_nodes * trainer.num_devices
    if world_size % cp:
        raise ConfigError(f"trainer.context_parallel: {cp} must divide the world size {world_size}")
    if loader_factory is None:
        _check_data(cfg, world_size // cp)
    changes = recipe_changes(point.recipe, to_dict(cfg)) if point is not None else []
    for line in startup_report(
        cfg, model, world_size=world_size, resume_from=resume_from, recipe=recipe, changes=changes
    ):
        say(line)
    if trainer.is_global_zero:
        # The probes' inputs (evaluation text, possibly over HTTP) now, before any other rank
        # exists or waits: built at the first probe, they kept the others in a barrier meanwhile.
        _prepare_probes(callbacks, say)

    # 3. train (resume restores weights, optimiser, step, data position per rank, RNG)
    t0 = time.perf_counter()
    trainer.fit(module, datamodule=data, ckpt_path=resume_from, weights_only=False)
    seconds = time.perf_counter() - t0
    _leave_process_group()

    # 4. what it did, returned and written to {run.dir}/fit_result.json
    last = ckpt_dir / "last.ckpt"
    result = FitResult(
        global_step=trainer.global_step,
        episodes=module.episodes_done,
        tokens=module.tokens_seen,
        final_loss=module.last_loss,
        seconds=seconds,
        checkpoint=str(last) if last.exists() else None,
        tensorboard_dir=str(run_dir / "tensorboard"),
        nonfinite_skipped=module.nonfinite_total,
        requeued=bool(requeue and requeue.requeued),
        interrupted=interrupt.requeued,
        resumed_step=point.global_step if point is not None else None,
    )
    if trainer.is_global_zero:
        write_result(result, run_dir)
    return result


def _max_steps(cfg: RecipeConfig) -> int:
    return cfg.trainer.max_steps if cfg.trainer.max_steps is not None else cfg.optim.total_steps


def _resume_point(cfg: RecipeConfig, run_dir: Path, ckpt_dir: Path, say=print):
    """(checkpoint to resume from or None, its ResumePoint or None); an earlier run's last.ckpt is
    never overwritten unless run.overwrite says so."""
    from stuffed_mamba.training.checkpoint import LAST, latest_complete, resolve_resume
    from stuffed_mamba.training.resume import read_resume_point

    resume_from = resolve_resume(cfg.run.resume, run_dir, say)
    earlier = latest_complete(ckpt_dir / LAST)
    if resume_from is None and earlier is not None and not cfg.run.overwrite:
        raise ConfigError(
            f"run.dir={cfg.run.dir} already holds {earlier.name} from an earlier run: run.resume=auto continues it, "
            "run.overwrite=true starts over, or choose another run.dir"
        )
    return resume_from, (read_resume_point(resume_from) if resume_from else None)


def _catch_requeue_signal(cfg: RecipeConfig, ckpt_dir: Path, checkpoints):
    """Under Slurm, the USR1 handler that checkpoints and requeues (None elsewhere)."""
    from stuffed_mamba import early_signals
    from stuffed_mamba.training.requeue import RequeueOnSignal

    if not (cfg.run.requeue_on_signal and "SLURM_JOB_ID" in os.environ):
        early_signals.release()  # nobody will honour a recorded USR1: its default action again
        return None
    requeue = RequeueOnSignal(ckpt_dir, saver=checkpoints.save_unless_current)
    requeue.install()
    return requeue


def _tokenizer(cfg: RecipeConfig):
    from stuffed_mamba.data import load_tokenizer

    try:
        return load_tokenizer(cfg.data.tokenizer)
    except (OSError, ValueError) as e:
        raise ConfigError(f"data.tokenizer: {first_line(e)}") from None


def _callbacks(cfg, run_dir, ckpt_dir, point, checkpoints, requeue, tokenizer, extra) -> tuple[list, Any]:
    """(callbacks in the order they act at a batch end: record, periodic save, Ctrl-C, requeue
    agreement, probes, extras; the Ctrl-C callback)."""
    from stuffed_mamba.training.requeue import StopOnInterrupt
    from stuffed_mamba.training.resume import RecordRun

    record = RecordRun(
        str(run_dir),
        to_yaml(cfg),
        to_dict(cfg),
        resumed_step=point.global_step if point else None,
    )
    interrupt = StopOnInterrupt(ckpt_dir, saver=checkpoints.save_unless_current)
    callbacks = [record, checkpoints, interrupt]
    if requeue is not None:
        callbacks.append(requeue)
    if cfg.probes.enabled:
        from stuffed_mamba.callbacks import build_callbacks

        callbacks += build_callbacks(cfg.probes, tokenizer=tokenizer, data_cfg=cfg.data, run_dir=str(run_dir))
    return callbacks + list(extra), interrupt


def _check_data(cfg: RecipeConfig, world_size: int) -> None:
    """A wrong source or listing, or too few shards for the ranks, is one line now rather than a
    traceback from inside trainer.fit; so is a source whose row streams keep no document (data/check.py)."""
    from stuffed_mamba.data.check import check_source

    try:
        check_source(cfg.data, world_size=world_size)
    except (OSError, ValueError) as e:
        msg = first_line(e)
        raise ConfigError(msg if msg.startswith("data") else f"data: {msg}") from None


def _leave_process_group() -> None:
    # Exiting with a live gloo group aborts some ranks ("terminate called without an active
    # exception", seen in 2 of 14 two-node runs): the job then ends FAILED after a complete run.
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _prepare_probes(callbacks, say) -> None:
    probes = [cb for cb in callbacks if hasattr(cb, "prepare_inputs")]
    if not probes:
        return
    t0 = time.perf_counter()
    errors = {cb.name: cb.prepare_inputs() for cb in probes}
    ready = [name for name, error in errors.items() if error is None]
    say(f"probes       inputs of {', '.join(ready) or 'none'} ready in {time.perf_counter() - t0:.1f} s")
    for error in filter(None, errors.values()):
        say(f"WARNING: {error} (the probe fails at every run)")
