"""`fit(cfg)`: recipe -> model, data, trainer -> train, torchtitan style (reads top to bottom)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stuffed_mamba.training.config import ConfigError, RecipeConfig, mamba2_overrides, to_dict, to_yaml

RESULT_FILE = "fit_result.json"


@dataclass
class FitResult:
    """What `fit` did; also written to `{run.dir}/fit_result.json` (rank 0)."""

    global_step: int
    episodes: int
    tokens: int
    final_loss: float | None  # rank 0's mean loss over the segments of its last episode
    seconds: float
    checkpoint: str | None
    tensorboard_dir: str
    nonfinite_skipped: int
    requeued: bool
    interrupted: bool = False  # Ctrl-C: stopped at an episode boundary with a checkpoint
    already_complete: bool = False  # the run had reached trainer.max_steps before this call: nothing was done


def build_model(cfg: RecipeConfig, tokenizer):
    """From `model.init_from` (official or transformers folder, or a hub name) or from scratch with `run.seed`."""
    from stuffed_mamba.model import Mamba2Config, Mamba2LM

    m = cfg.model
    overrides = mamba2_overrides(m)
    if "A_init_range" in overrides:
        overrides["A_init_range"] = tuple(overrides["A_init_range"])
    if m.init_from:
        try:  # a folder, or a hub name (OWNER/NAME) through the HuggingFace cache
            model = Mamba2LM.from_pretrained(m.init_from, backend=m.backend)
        except (OSError, ValueError, KeyError) as e:
            raise ConfigError(f"model.init_from: {_first_line(e)}") from None
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


def build_trainer(cfg: RecipeConfig, callbacks: Sequence):
    import lightning as L
    from lightning.pytorch.loggers import TensorBoardLogger
    from lightning.pytorch.plugins.environments import SLURMEnvironment

    from stuffed_mamba.training.strategy import build_strategy

    t = cfg.trainer
    plugins = []
    if SLURMEnvironment.detect():
        # Lightning's auto-requeue saves mid-episode from the signal handler; ours (RequeueOnSignal) does not.
        plugins.append(SLURMEnvironment(auto_requeue=False))
    if t.enable_progress_bar:
        callbacks = [*callbacks, _progress_bar()]
    return L.Trainer(
        max_steps=t.max_steps if t.max_steps is not None else cfg.optim.total_steps,
        max_epochs=1,  # one pass of the loader = the whole stream (it cycles or stops by data.epochs)
        accelerator=t.accelerator,
        devices=t.devices,
        num_nodes=t.num_nodes,
        strategy=build_strategy(cfg),
        precision=t.precision,
        logger=TensorBoardLogger(save_dir=cfg.run.dir, name="", version="tensorboard", default_hp_metric=False),
        callbacks=list(callbacks),
        plugins=plugins or None,
        enable_checkpointing=False,  # EpisodeCheckpoint saves at episode boundaries
        use_distributed_sampler=False,  # the data pipeline shards by rank itself
        limit_val_batches=0,
        num_sanity_val_steps=0,
        log_every_n_steps=1,
        enable_progress_bar=t.enable_progress_bar,
        enable_model_summary=False,
        default_root_dir=cfg.run.dir,
    )


def _progress_bar():
    """Optimiser steps toward `trainer.max_steps` with an ETA, continuing from the resumed step.

    Lightning's bar counts batches (episodes here, S optimiser steps each) from 0 after a resume,
    has no total for a streamed loader, and shows the logger's version cut to "oard"."""
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

    return StepProgressBar()


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
        return _complete(point, resume_from, run_dir)
    checkpoints = EpisodeCheckpoint(ckpt_dir, cfg.run.checkpoint_every_n_steps, cfg.run.keep_every_n_steps)
    requeue = _catch_requeue_signal(cfg, ckpt_dir, checkpoints)  # before anything slow: it can come any time
    if cfg.run.torch_threads:
        import torch

        torch.set_num_threads(cfg.run.torch_threads)

    # 1. tokenizer and model (same seed on every rank: identical initial weights)
    tokenizer = _tokenizer(cfg)
    L.seed_everything(cfg.run.seed, workers=False, verbose=False)
    model = build_model(cfg, tokenizer)
    if point is not None:
        check_architecture(point, model.config)

    # 2. callbacks, trainer, module, data
    callbacks, interrupt = _callbacks(cfg, run_dir, ckpt_dir, point, checkpoints, requeue, tokenizer, extra_callbacks)
    trainer = build_trainer(cfg, callbacks)
    module = TBPTTModule(model, cfg.optim, log_every_n_steps=cfg.trainer.log_every_n_steps)
    data = EpisodeDataModule(cfg.data, factory=loader_factory)
    world_size = trainer.num_nodes * trainer.num_devices
    if loader_factory is None:
        _check_data(cfg, world_size)
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


def _complete(point, resume_from: str, run_dir: Path) -> FitResult:
    """The result of a run that already reached trainer.max_steps: nothing to do."""
    c = point.counters
    return FitResult(
        point.global_step,
        c.get("episodes_done", 0),
        c.get("tokens_seen", 0),
        None,
        0.0,
        resume_from,
        str(run_dir / "tensorboard"),
        c.get("nonfinite_total", 0),
        False,
        already_complete=True,
    )


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
        raise ConfigError(f"data.tokenizer: {_first_line(e)}") from None


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
        hyperparameters=lambda: _flat(to_dict(cfg)),
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
    traceback from inside trainer.fit (building a loader only reads the listing)."""
    from stuffed_mamba.data import build_dataloader

    try:
        build_dataloader(cfg.data, rank=0, world_size=world_size)
    except (OSError, ValueError) as e:
        msg = _first_line(e)
        raise ConfigError(msg if msg.startswith("data") else f"data: {msg}") from None


def _leave_process_group() -> None:
    # Exiting with a live gloo group aborts some ranks ("terminate called without an active
    # exception", seen in 2 of 14 two-node runs): the job then ends FAILED after a complete run.
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def write_result(result: FitResult, run_dir: Path) -> Path:
    """`{run.dir}/fit_result.json` (beside checkpoints/): what the run did, for sweeps and scripts."""
    import dataclasses
    import json

    path = Path(run_dir) / RESULT_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(dataclasses.asdict(result), indent=1) + "\n")
    return path


def read_result(run_dir: Path) -> FitResult | None:
    """The FitResult a finished `fit` wrote into `run_dir` (None when there is none)."""
    import json

    path = Path(run_dir) / RESULT_FILE
    return FitResult(**json.loads(path.read_text())) if path.is_file() else None


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


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def quiet_lightning() -> None:
    """Silence Lightning's notes about things this recipe does on purpose."""
    import logging
    import warnings

    for pattern in (
        ".*`dataloader_iter`.*",  # we fetch episodes ourselves, on purpose (exact resume)
        ".*isinstance\\(treespec, LeafSpec\\).*",
        ".*The `srun` command is available.*",
        ".*'set_vital' is deprecated.*",
    ):
        warnings.filterwarnings("ignore", message=pattern)

    class DropTips(logging.Filter):
        def filter(self, record):
            return "Tip: For seamless" not in record.getMessage()

    rank_zero_logger = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if not any(type(f).__name__ == "DropTips" for f in rank_zero_logger.filters):
        rank_zero_logger.addFilter(DropTips())
    for name in (
        "lightning.pytorch.trainer.connectors.checkpoint_connector",
        "lightning.pytorch.trainer.connectors.logger_connector.logger_connector",
        "lightning.pytorch.trainer.connectors.callback_connector",
    ):
        logging.getLogger(name).setLevel(logging.WARNING)


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flat(v, key + "."))
        else:
            out[key] = v if isinstance(v, (int, float, str, bool)) or v is None else str(v)
    return out
