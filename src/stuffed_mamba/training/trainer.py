"""The `lightning.Trainer` a recipe asks for, and Lightning made quiet about what the recipe does on
purpose. Lightning is imported inside the functions: importing this module is cheap."""

from __future__ import annotations

from collections.abc import Sequence

from stuffed_mamba.training.config import RecipeConfig


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
        from stuffed_mamba.callbacks.progress import StepProgressBar

        callbacks = [*callbacks, StepProgressBar()]
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
