"""Strategies from the recipe: the DeepSpeed config each GPU recipe produces (stage, bf16, clipping,
micro-batch, accumulation), inspected without training. The DeepSpeed tests that train are
tests/training/test_deepspeed.py (the real engine, 2 ranks on the CPU); these remain for the
settings of the 256K recipes, which the CPU runs cannot load at size."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
from lightning.pytorch.strategies import DeepSpeedStrategy

from stuffed_mamba.recipe_file import read_recipe
from stuffed_mamba.training.config import load_recipe
from stuffed_mamba.training.strategy import build_strategy
from tests.training.common import tiny_module, tiny_recipe
from tests.training.fakes import FakeEpisodeLoader

DEEPSPEED_RECIPES = sorted(
    str(p) for p in Path("recipes").glob("*.yaml") if read_recipe(p).get("trainer", {}).get("strategy") == "deepspeed"
)


def formatted(cfg, module=None):
    """What Lightning hands to deepspeed.initialize: the strategy's config after _format_config()."""
    strategy = build_strategy(cfg)
    assert isinstance(strategy, DeepSpeedStrategy)
    trainer = L.Trainer(
        strategy=strategy,
        accelerator="cpu",
        devices=1,
        precision=cfg.trainer.precision,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    module = module or tiny_module()
    strategy._lightning_module = module
    module.trainer = trainer
    strategy._format_config()
    return trainer, module, strategy.config


def test_the_256k_recipes_use_deepspeed():
    assert {Path(p).name for p in DEEPSPEED_RECIPES} >= {
        "mamba2_130m_256k.yaml",
        "mamba2_370m_256k.yaml",
        "mamba2_780m_256k.yaml",
    }


@pytest.mark.parametrize("recipe", DEEPSPEED_RECIPES)
def test_recipe_deepspeed_config(recipe):
    cfg = load_recipe(recipe)
    trainer, module, config = formatted(cfg)
    assert config["zero_optimization"]["stage"] == cfg.trainer.deepspeed.stage
    # fp32 parameters, bf16 autocast (DeepSpeed's own bf16 would cast A_log, dt_bias, D): test_precision.py
    assert config["bf16"] == {"enabled": False} and config["torch_autocast"]["enabled"] is True
    # clipping under manual optimisation happens only through DeepSpeed's own setting
    assert config["gradient_clipping"] == cfg.optim.grad_clip == 1.0
    assert config["gradient_accumulation_steps"] == 1
    assert config["train_micro_batch_size_per_gpu"] == cfg.data.batch_size
    assert config["zero_allow_untested_optimizer"] is True  # torch AdamW inside ZeRO
    # no conflict with manual optimisation: Lightning's clipping is unset (it refuses it in
    # manual mode) and the module leaves clipping to DeepSpeed
    assert trainer.gradient_clip_val is None
    assert not module.automatic_optimization
    assert module._clip_gradients() is None


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_zero_stage_and_clip_come_from_the_recipe(stage):
    cfg = load_recipe("recipes/mamba2_370m_256k.yaml", [f"trainer.deepspeed.stage={stage}", "optim.grad_clip=0.5"])
    _, _, config = formatted(cfg)
    assert config["zero_optimization"]["stage"] == stage
    assert config["gradient_clipping"] == 0.5


def test_fp32_recipe_leaves_bf16_off():
    cfg = load_recipe("recipes/mamba2_370m_256k.yaml", ["trainer.precision=32-true"])
    _, _, config = formatted(cfg)
    assert config["bf16"] == {"enabled": False} and config["torch_autocast"]["enabled"] is False


def test_under_slurm_lightnings_auto_requeue_is_off(tmp_path, monkeypatch):
    """Lightning's own requeue saves mid-episode from the signal handler; ours runs instead."""
    from lightning.pytorch.plugins.environments import SLURMEnvironment

    from stuffed_mamba.training.trainer import build_trainer

    for k, v in dict(
        SLURM_NTASKS="1",
        SLURM_JOB_ID="5",
        SLURM_JOB_NAME="train",
        SLURM_PROCID="0",
        SLURM_LOCALID="0",
        SLURM_NODEID="0",
        SLURM_NODELIST="localhost",
    ).items():
        monkeypatch.setenv(k, v)
    trainer = build_trainer(tiny_recipe(tmp_path), [])
    env = trainer._accelerator_connector.cluster_environment
    assert isinstance(env, SLURMEnvironment) and env.auto_requeue is False


@pytest.mark.parametrize("precision", ["bf16-mixed"])  # bf16-true is refused (test_precision.py)
def test_bf16_trains_on_the_cpu(precision, tmp_path):
    """The recipes' bf16 (appendix F.1) through the same loop, on the CPU: finite losses, no skips."""
    import math

    from stuffed_mamba.training.fit import fit

    r = fit(
        tiny_recipe(tmp_path, f"trainer.precision={precision}", "trainer.max_steps=6"),
        loader_factory=lambda r, w: FakeEpisodeLoader(rank=r, world_size=w),
        log=lambda s: None,
    )
    assert r.global_step == 6 and r.nonfinite_skipped == 0 and math.isfinite(r.final_loss)
