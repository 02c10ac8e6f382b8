"""The doctor's `memory` check: free memory per device against `stuffed_mamba.analysis.memory`'s
estimate for the recipe."""

from __future__ import annotations

import os

from stuffed_mamba.analysis.memory import GIB, MemoryEstimate, training_memory
from stuffed_mamba.training.doctor.context import Context, Fail, Skip, device_count


def check_memory(ctx: Context) -> str:
    ctx.need("recipe")
    cfg = ctx.cfg
    if cfg.model.init_from:
        ctx.need("init_from")  # the architecture comes from it
    else:
        ctx.need("tokenizer")  # the vocabulary does
        from stuffed_mamba.model import Mamba2Config
        from stuffed_mamba.training.config import mamba2_overrides

        fields = mamba2_overrides(cfg.model)
        fields.pop("A_init_range", None)
        fields.setdefault("vocab_size", ctx.tokenizer.vocab_size)
        ctx.model_config = Mamba2Config(**fields)
    gpu = cfg.trainer.accelerator in ("gpu", "cuda") or (cfg.trainer.accelerator == "auto" and ctx.cuda)
    estimate = recipe_memory(cfg, ctx.model_config)
    need, parts = estimate.total, estimate.describe()
    if cfg.model.backend == "mamba_ssm":  # the kernels' 32-bit offsets and the calls split for them
        from stuffed_mamba.ops.kernel_split import describe

        parts += f"; {describe(ctx.model_config, cfg.data.batch_size, cfg.data.train_length)}"
    if gpu:
        if not ctx.cuda:
            raise Skip(f"no CUDA device here to compare with: needs ~{need / GIB:.1f} GiB per GPU ({parts})")
        import torch

        free = min(torch.cuda.mem_get_info(i)[0] for i in range(ctx.cuda))
        where = f"free {free / GIB:.1f} GiB on the emptiest of {ctx.cuda} GPU(s)"
    else:
        ranks = device_count(cfg.trainer.devices, 1)
        need *= ranks  # the ranks share this machine's memory
        free = _mem_available()
        where = f"{free / GIB:.1f} GiB available for {ranks} CPU rank(s)"
    text = f"needs ~{need / GIB:.1f} GiB ({parts}); {where}"
    if need > free:
        raise Fail(text)
    return text


def recipe_memory(cfg, c) -> MemoryEstimate:
    """The per-device estimate for the recipe `cfg` training the architecture `c` (a Mamba2Config)."""
    t = cfg.trainer
    return training_memory(
        c,
        tokens=cfg.data.batch_size * cfg.data.train_length,
        activation_bytes=2 if str(t.precision).startswith("bf16") else 4,
        activation_checkpointing=cfg.model.activation_checkpointing,
        zero_stage=t.deepspeed.stage if t.strategy == "deepspeed" else None,
        ranks=device_count(t.devices, 1) * t.num_nodes,
    )


def _mem_available() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
