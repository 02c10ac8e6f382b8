"""The recipe's sections as dataclasses that OmegaConf validates (DESIGN section 7): `RecipeConfig`
holds `model`, `data`, `optim`, `trainer`, `probes`, `run`; `ConfigError` is the one-line error of a
recipe. Loading and merging are `config.py`'s, the checks of values `validate.py`'s.

`data:` is `stuffed_mamba.data.DataConfig` verbatim and `probes:` is
`stuffed_mamba.probes.registry.ProbesConfig` verbatim (one entry per registered probe); `model:` holds every
`Mamba2Config` field (generated from it, so the two cannot drift) plus how the
model is built (`init_from`, `backend`, `activation_checkpointing`).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

from stuffed_mamba.data import DataConfig
from stuffed_mamba.model import Mamba2Config
from stuffed_mamba.probes.registry import ProbesConfig

# the checkout the package runs from (an editable install): its recipes/ are found from anywhere
PROJECT_ROOT = Path(__file__).resolve().parents[3]
STRATEGIES = ("auto", "ddp", "deepspeed")
# fp16 needs a loss scaler, which interacts badly with skipping non-finite steps; the
# paper trains in bf16 (appendix F.1) and CPUs run fp32.
PRECISIONS = ("32-true", "32", "bf16-mixed")
# Stores every parameter in bf16, A_log, dt_bias and D included: refused with its reason.
ROUNDED_PRECISIONS = ("bf16-true", "16-true", "bf16", "16")


class ConfigError(ValueError):
    """A recipe problem the user can fix; its message is one line naming the key."""


# ---------------------------------------------------------------------------- model


def _model_section() -> type:
    """`ModelSection`: every Mamba2Config field as Optional (None = from `init_from`'s
    config.json, or Mamba2Config's own default), plus how to build the model."""
    hints = typing.get_type_hints(Mamba2Config)
    fields = [
        # An official checkpoint folder (mamba_ssm layout) or a transformers Mamba2 folder.
        ("init_from", Optional[str], None),  # noqa: UP045 (OmegaConf reads typing.Optional)
        ("backend", str, "torch"),  # "torch" | "mamba_ssm": explicit, never a silent fallback
        # Recompute each layer in the backward pass: memory per segment stops growing with n_layer.
        ("activation_checkpointing", bool, False),
    ]
    for f in dataclasses.fields(Mamba2Config):
        if not f.init:
            continue
        t = hints.get(f.name, Any)
        if typing.get_origin(t) in (Union, types.UnionType):  # already Optional[...] or X | None
            fields.append((f.name, t, None))
        elif t in (int, float, bool, str):
            fields.append((f.name, Optional[t], None))  # noqa: UP045 (built at run time for OmegaConf)
        else:
            fields.append((f.name, Any, None))
    return dataclasses.make_dataclass("ModelSection", [(n, t, field(default=d)) for n, t, d in fields])


ModelSection = _model_section()
MODEL_BUILD_KEYS = ("init_from", "backend", "activation_checkpointing")


# ---------------------------------------------------------------------------- optim


@dataclass
class OptimConfig:
    """AdamW + WSD (appendix F.1). Steps are optimiser steps."""

    lr: float = 3e-4  # peak LR; the paper sweeps {1e-5 ... 1e-3}
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])  # Mamba-2's pre-training betas
    eps: float = 1e-8
    weight_decay: float = 0.1  # not on norms, biases, A_log, D, dt_bias
    grad_clip: float = 1.0  # max global grad norm; 0 turns clipping off
    # "segment": one optimiser step per segment (0.5M tokens per step in the paper);
    # "episode": gradients of all S segments summed into one step.
    optimizer_step: str = "segment"
    # Back-propagation through the episode: "truncated" stops the gradient at segment boundaries
    # (the paper's; horizon T_train), "full" is exact through the S segments (horizon S*T_train,
    # at one segment's memory and one more forward per segment; needs optimizer_step: episode).
    bptt: str = "truncated"
    total_steps: int = 50_000  # the schedule's length; trainer.max_steps may stop earlier
    warmup_steps: int = 1000
    decay_fraction: float = 0.1  # WSD decays over the last 10% of total_steps
    decay: str = "linear"  # linear | exponential | 1-sqrt
    min_lr_ratio: float = 0.0
    # K non-finite steps in a row abort the run (each one is skipped and counted).
    max_nonfinite_in_a_row: int = 10
    # The state every episode starts from (training/initial_state.py, Buitrago & Gu 2025): "zeros" (the
    # paper's), "passed" (each row's previous final state), "noise" (Gaussian SSM state of standard
    # deviation initial_state_std), "fitted_noise" (Gaussian fitted to recent final states).
    initial_state: str = "zeros"
    initial_state_std: float | None = None  # noise only


# ---------------------------------------------------------------------------- trainer


@dataclass
class DeepSpeedSection:
    """ZeRO settings used when `trainer.strategy: deepspeed`."""

    stage: int = 2
    offload_optimizer: bool = False
    offload_parameters: bool = False
    # ZeRO-2/3 communication buckets (elements); DeepSpeed's defaults are 5e8.
    allgather_bucket_size: int = 200_000_000
    reduce_bucket_size: int = 200_000_000


@dataclass
class TrainerSection:
    """Arguments of `lightning.Trainer` (only these: the rest is decided by the recipe)."""

    max_steps: int | None = None  # optimiser steps where this job stops; None = optim.total_steps
    accelerator: str = "auto"
    devices: int | str = "auto"
    num_nodes: int = 1
    strategy: str = "auto"  # auto | ddp | deepspeed
    precision: str = "32-true"
    log_every_n_steps: int = 1  # optimiser steps between TensorBoard points (an episode's, when it crosses one)
    enable_progress_bar: bool = True
    # How long a rank waits for the others in a collective (barrier, gradient all-reduce) and at
    # start-up, under ddp and deepspeed (torch's default: 30 minutes). The other ranks wait in a
    # barrier while rank 0 probes, so it must outlast the longest probe (its time_budget_s plus
    # the sample under way at 256K) and a checkpoint save.
    collective_timeout_s: float = 3600.0
    # N consecutive ranks share every row, each holding T/N consecutive tokens of each segment
    # (training/context_parallel.py): activation memory per rank falls by N; the data-parallel
    # world is (devices x num_nodes) / N.
    context_parallel: int = 1
    deepspeed: DeepSpeedSection = field(default_factory=DeepSpeedSection)


# ---------------------------------------------------------------------------- run


@dataclass
class RunConfig:
    dir: str = "runs/default"  # TensorBoard logs and checkpoints/ live here
    seed: int = 0  # weight initialisation (the data pipeline and probes own their seeds)
    # "auto": continue from {dir}/checkpoints/last.ckpt when it exists; a path: from it; null: fresh.
    resume: str | None = None
    # a fresh start (resume null, or auto with nothing to resume) in a run.dir that already holds
    # checkpoints/last.ckpt is an error unless this is true: a typo must not overwrite a finished run
    overwrite: bool = False
    checkpoint_every_n_steps: int = 1000  # saved at the first episode boundary at or past each multiple
    keep_every_n_steps: int | None = None  # also keep step-NNNNNNN.ckpt copies at these multiples
    requeue_on_signal: bool = True  # under Slurm: SIGUSR1 -> checkpoint at a batch end, requeue, stop
    # torch intra-op threads (None: torch's default). Tiny CPU models run many small ops: on a
    # shared machine 2 threads per process measured 5x slower than 1 (OpenMP oversubscription).
    torch_threads: int | None = None


@dataclass
class RecipeConfig:
    model: ModelSection = field(default_factory=ModelSection)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerSection = field(default_factory=TrainerSection)
    probes: ProbesConfig = field(default_factory=ProbesConfig)
    run: RunConfig = field(default_factory=RunConfig)
