"""Impossible values and impossible combinations of a recipe, each a one-line `ConfigError` naming its
key: `validate(cfg)`, which `load_recipe` runs before anything is built."""

from __future__ import annotations

import dataclasses

from stuffed_mamba.model import Mamba2Config
from stuffed_mamba.training.initial_state import MODES as INITIAL_STATES
from stuffed_mamba.training.schedule import DECAY_SHAPES
from stuffed_mamba.training.schema import (
    PRECISIONS,
    ROUNDED_PRECISIONS,
    STRATEGIES,
    ConfigError,
    OptimConfig,
    RecipeConfig,
)


def _check(ok: bool, key: str, msg: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: {msg}")


def validate(cfg: RecipeConfig) -> None:
    """Impossible values and impossible combinations, each named by its key."""
    o, t, r, m, d = cfg.optim, cfg.trainer, cfg.run, cfg.model, cfg.data
    _check(o.lr > 0, "optim.lr", f"must be > 0, got {o.lr}")
    _check(
        len(o.betas) == 2 and all(0 <= b < 1 for b in o.betas),
        "optim.betas",
        f"must be two numbers in [0, 1), got {o.betas}",
    )
    _check(o.eps > 0, "optim.eps", f"must be > 0, got {o.eps}")
    _check(o.weight_decay >= 0, "optim.weight_decay", f"must be >= 0, got {o.weight_decay}")
    _check(o.grad_clip >= 0, "optim.grad_clip", f"must be >= 0 (0 = off), got {o.grad_clip}")
    _check(
        o.optimizer_step in ("segment", "episode"),
        "optim.optimizer_step",
        f"must be 'segment' or 'episode', got {o.optimizer_step!r}",
    )
    _check(o.bptt in ("truncated", "full"), "optim.bptt", f"must be 'truncated' or 'full', got {o.bptt!r}")
    _check(
        o.bptt != "full" or o.optimizer_step == "episode",
        "optim.bptt",
        "full back-propagates through the whole episode, so it needs optim.optimizer_step=episode",
    )
    _check(o.total_steps >= 1, "optim.total_steps", f"must be >= 1, got {o.total_steps}")
    _check(
        0 <= o.warmup_steps < o.total_steps,
        "optim.warmup_steps",
        f"must be in [0, optim.total_steps={o.total_steps}), got {o.warmup_steps}",
    )
    _check(0.0 <= o.decay_fraction <= 1.0, "optim.decay_fraction", f"must be in [0, 1], got {o.decay_fraction}")
    _check(o.decay in DECAY_SHAPES, "optim.decay", f"must be one of {', '.join(DECAY_SHAPES)}, got {o.decay!r}")
    _check(0.0 <= o.min_lr_ratio <= 1.0, "optim.min_lr_ratio", f"must be in [0, 1], got {o.min_lr_ratio}")
    _check(
        o.max_nonfinite_in_a_row >= 1, "optim.max_nonfinite_in_a_row", f"must be >= 1, got {o.max_nonfinite_in_a_row}"
    )
    _check_initial_state(o)

    _check(t.max_steps is None or t.max_steps >= 1, "trainer.max_steps", f"must be >= 1 or null, got {t.max_steps}")
    _check(t.strategy in STRATEGIES, "trainer.strategy", f"must be one of {', '.join(STRATEGIES)}, got {t.strategy!r}")
    _check(
        str(t.precision) not in ROUNDED_PRECISIONS,
        "trainer.precision",
        f"{t.precision} stores A_log, dt_bias and D in half precision, which rounds the decay exp(Delta A); "
        "use bf16-mixed (fp32 parameters, bf16 matmuls)",
    )
    _check(
        str(t.precision) in PRECISIONS,
        "trainer.precision",
        f"must be one of {', '.join(PRECISIONS)}, got {t.precision!r}",
    )
    _check(
        isinstance(t.devices, int) and t.devices >= 1 or t.devices == "auto",
        "trainer.devices",
        f"must be a count >= 1 or 'auto', got {t.devices!r}",
    )
    _check(t.num_nodes >= 1, "trainer.num_nodes", f"must be >= 1, got {t.num_nodes}")
    _check_context_parallel(cfg)
    _check(t.collective_timeout_s > 0, "trainer.collective_timeout_s", f"must be > 0, got {t.collective_timeout_s}")
    if cfg.probes.enabled:
        for f in dataclasses.fields(cfg.probes):
            probe = getattr(cfg.probes, f.name)
            if getattr(probe, "enabled", False) and hasattr(probe, "time_budget_s"):
                _check(
                    t.collective_timeout_s > probe.time_budget_s,
                    "trainer.collective_timeout_s",
                    f"must exceed probes.{f.name}.time_budget_s={probe.time_budget_s:g} (the other ranks wait "
                    f"in a barrier while rank 0 probes), got {t.collective_timeout_s:g}",
                )
    _check(t.log_every_n_steps >= 1, "trainer.log_every_n_steps", f"must be >= 1, got {t.log_every_n_steps}")
    _check(t.deepspeed.stage in (1, 2, 3), "trainer.deepspeed.stage", f"must be 1, 2 or 3, got {t.deepspeed.stage}")
    _check(
        not t.deepspeed.offload_parameters or t.deepspeed.stage == 3,
        "trainer.deepspeed.offload_parameters",
        "needs trainer.deepspeed.stage=3 (only ZeRO-3 partitions parameters)",
    )

    _check(
        r.checkpoint_every_n_steps >= 1,
        "run.checkpoint_every_n_steps",
        f"must be >= 1, got {r.checkpoint_every_n_steps}",
    )
    _check(
        r.keep_every_n_steps is None or r.keep_every_n_steps >= 1,
        "run.keep_every_n_steps",
        f"must be >= 1 or null, got {r.keep_every_n_steps}",
    )
    _check(bool(r.dir), "run.dir", "must not be empty")
    _check(
        r.torch_threads is None or r.torch_threads >= 1,
        "run.torch_threads",
        f"must be >= 1 or null, got {r.torch_threads}",
    )

    _check(m.backend in ("torch", "mamba_ssm"), "model.backend", f"must be 'torch' or 'mamba_ssm', got {m.backend!r}")
    if m.init_from is None:
        for key in ("d_model", "n_layer"):
            _check(
                getattr(m, key) is not None,
                f"model.{key}",
                "is required when model.init_from is null (training from scratch)",
            )
    for key in ("segments", "train_length", "batch_size"):
        _check(getattr(d, key) >= 1, f"data.{key}", f"must be >= 1, got {getattr(d, key)}")


def _check_initial_state(o: OptimConfig) -> None:
    mode, std = o.initial_state, o.initial_state_std
    _check(mode in INITIAL_STATES, "optim.initial_state", f"must be one of {', '.join(INITIAL_STATES)}, got {mode!r}")
    _check(
        std is None or mode == "noise",
        "optim.initial_state_std",
        f"is the std of optim.initial_state=noise, but the mode is {mode}: remove it or set initial_state=noise",
    )
    _check(
        std is None or (std > 0 and std < float("inf")),
        "optim.initial_state_std",
        f"must be > 0 (0 is initial_state=zeros), got {std}",
    )
    _check(
        mode != "noise" or std is not None,
        "optim.initial_state",
        "noise needs optim.initial_state_std, the standard deviation of the Gaussian initial SSM state",
    )


def _check_context_parallel(cfg: RecipeConfig) -> None:
    n, t, d = cfg.trainer.context_parallel, cfg.trainer, cfg.data
    _check(n >= 1, "trainer.context_parallel", f"must be >= 1, got {n}")
    if n == 1:
        return
    if isinstance(t.devices, int):
        world = t.devices * t.num_nodes
        _check(
            world % n == 0,
            "trainer.context_parallel",
            f"{n} must divide the world size trainer.devices x trainer.num_nodes = {world}",
        )
    _check(
        d.train_length % n == 0,
        "trainer.context_parallel",
        f"each rank holds data.train_length/{n} tokens: data.train_length={d.train_length} is not divisible by {n}",
    )
    km1 = (cfg.model.d_conv or Mamba2Config.d_conv) - 1
    _check(
        d.train_length // n >= km1,
        "trainer.context_parallel",
        f"each rank's {d.train_length // n} tokens must cover the conv's d_conv-1 = {km1} (fewer ranks)",
    )
