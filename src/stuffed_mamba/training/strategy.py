"""Strategy and DeepSpeed configuration from the recipe's `trainer:` section.

Under DeepSpeed with manual optimisation Lightning sets `gradient_clipping` to 0.0
and its precision plugin's `clip_gradients` is a no-op, so the recipe's
`optim.grad_clip` goes into the DeepSpeed config itself: DeepSpeed clips inside
its `step()`. DeepSpeed's bf16 keeps the parameters themselves in bf16 (with fp32
master weights in the ZeRO optimizer).
"""

from __future__ import annotations

from typing import Any

from stuffed_mamba.training.config import RecipeConfig


def deepspeed_config(cfg: RecipeConfig) -> dict[str, Any]:
    """The DeepSpeed config dict a recipe produces (printed at start-up)."""
    ds = cfg.trainer.deepspeed
    zero: dict[str, Any] = {
        "stage": ds.stage,
        "contiguous_gradients": True,
        "overlap_comm": True,
        "allgather_bucket_size": ds.allgather_bucket_size,
        "reduce_bucket_size": ds.reduce_bucket_size,
    }
    if ds.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
    if ds.offload_parameters:
        zero["offload_param"] = {"device": "cpu", "pin_memory": True}
    precision = str(cfg.trainer.precision)
    return {
        "zero_optimization": zero,
        # torch.optim.AdamW is not one of DeepSpeed's own optimizers; ZeRO wraps it fine.
        "zero_allow_untested_optimizer": True,
        "gradient_clipping": float(cfg.optim.grad_clip),
        "train_micro_batch_size_per_gpu": int(cfg.data.batch_size),
        "bf16": {"enabled": precision.startswith("bf16")},
        "wall_clock_breakdown": False,
    }


def build_strategy(cfg: RecipeConfig):
    """"auto" -> Lightning's choice for one device, "ddp" -> DDPStrategy, "deepspeed" -> DeepSpeedStrategy."""
    name = cfg.trainer.strategy
    if name == "auto":
        return "auto"
    if name == "ddp":
        from lightning.pytorch.strategies import DDPStrategy

        # Every parameter gets a gradient in every segment; no search for unused ones.
        return DDPStrategy(find_unused_parameters=False)
    if name == "deepspeed":
        from lightning.pytorch.strategies import DeepSpeedStrategy

        return DeepSpeedStrategy(config=deepspeed_config(cfg))
    raise ValueError(f"unknown strategy {name!r}")


def is_deepspeed(strategy) -> bool:
    from lightning.pytorch.strategies import DeepSpeedStrategy  # does not import deepspeed itself

    return isinstance(strategy, DeepSpeedStrategy)


def deepspeed_engine(strategy):
    """The `deepspeed.DeepSpeedEngine` a DeepSpeed strategy wraps the module in (None otherwise,
    or before `trainer.fit` has set it up)."""
    return getattr(strategy, "model", None) if is_deepspeed(strategy) else None
