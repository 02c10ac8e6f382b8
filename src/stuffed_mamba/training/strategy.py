"""Strategy and DeepSpeed configuration from the recipe's `trainer:` section.

Under DeepSpeed with manual optimisation Lightning sets `gradient_clipping` to 0.0
and its precision plugin's `clip_gradients` is a no-op, so the recipe's
`optim.grad_clip` goes into the DeepSpeed config itself: DeepSpeed clips inside
its `step()`.

Precision policy (docs/training.md, "Precision"): the parameters stay fp32 under every
strategy and `bf16-mixed` is torch autocast, so the big matmuls (in_proj, out_proj, the
LM head) run in bf16 while `A_log`, `dt_bias`, `D` and the SSM state stay fp32:
they set the decay exp(Delta A) that every probe measures, and bf16's 1/32 steps at
dt_bias ~ -5 move Delta by up to 1.6%. Under DDP that is Lightning's own bf16-mixed.
Under DeepSpeed it is not: Lightning maps bf16-mixed to DeepSpeed's `bf16`, which casts
every parameter to bf16. So the config here turns DeepSpeed's `bf16` off (Lightning then
leaves it alone) and its `torch_autocast` on: fp32 parameters, gradients and ZeRO states,
the engine's forward (our whole training step) under autocast.
"""

from __future__ import annotations

from datetime import timedelta
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
        # Set explicitly so that Lightning does not enable DeepSpeed's bf16 (parameters in bf16).
        "bf16": {"enabled": False},
        # No module's gradients reduced in bf16: fp32 as under DDP, and one fp32 bucket rather than
        # an fp32 and a bf16 one of reduce_bucket_size elements each (both hold fp32 gradients).
        "torch_autocast": {
            "enabled": precision == "bf16-mixed",
            "dtype": "bfloat16",
            "lower_precision_safe_modules": [],
        },
        "wall_clock_breakdown": False,
    }


def build_strategy(cfg: RecipeConfig):
    """ "auto" -> Lightning's choice for one device, "ddp" -> DDPStrategy, "deepspeed" -> DeepSpeedStrategy."""
    name = cfg.trainer.strategy
    if name == "auto":
        return "auto"
    timeout = timedelta(seconds=cfg.trainer.collective_timeout_s)
    if name == "ddp":
        from lightning.pytorch.strategies import DDPStrategy

        # Every parameter gets a gradient in every segment; no search for unused ones.
        return DDPStrategy(find_unused_parameters=False, timeout=timeout)
    if name == "deepspeed":
        from lightning.pytorch.strategies import DeepSpeedStrategy

        return DeepSpeedStrategy(config=deepspeed_config(cfg), timeout=timeout)
    raise ValueError(f"unknown strategy {name!r}")


def is_deepspeed(strategy) -> bool:
    from lightning.pytorch.strategies import DeepSpeedStrategy  # does not import deepspeed itself

    return isinstance(strategy, DeepSpeedStrategy)


def deepspeed_engine(strategy):
    """The `deepspeed.DeepSpeedEngine` a DeepSpeed strategy wraps the module in (None otherwise,
    or before `trainer.fit` has set it up)."""
    return getattr(strategy, "model", None) if is_deepspeed(strategy) else None
