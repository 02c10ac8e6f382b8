"""Recipe schema: dataclasses validated by OmegaConf (DESIGN section 7).

A recipe is YAML with the sections `model`, `data`, `optim`, `trainer`, `probes`,
`run`, and optionally `base: OTHER.yaml` (its keys merged over that recipe's, see
stuffed_mamba/recipe_file.py); `key=value` overrides from the command line are merged on top. An unknown
key, a wrong type or an impossible value is a one-line `ConfigError` naming the
key, raised before any model or data is built.

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
from stuffed_mamba.training.initial_state import MODES as INITIAL_STATES
from stuffed_mamba.training.schedule import DECAY_SHAPES

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


# ---------------------------------------------------------------------------- loading


def _one_line(e: Exception) -> str:
    key = getattr(e, "full_key", None)
    msg = (getattr(e, "msg", None) or str(e)).strip().splitlines()[0]
    return f"{key}: {msg}" if key else msg


def load_recipe(path: str | Path | None, overrides: list[str] = ()) -> RecipeConfig:
    """YAML recipe (its `base:` chain first) + `key=value` overrides -> a validated RecipeConfig."""
    from omegaconf import OmegaConf
    from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

    from stuffed_mamba.recipe_file import RecipeFileError, read_chain

    schema = OmegaConf.structured(RecipeConfig)
    layers: list[tuple[Path | None, Any]] = []  # (file or None for the overrides, its keys)
    if path is not None:
        path = Path(path)
        if not path.is_file() and not path.is_absolute() and (PROJECT_ROOT / path).is_file():
            path = PROJECT_ROOT / path  # a shipped recipe (recipes/...) from any working directory
        if not path.is_file():
            raise ConfigError(f"recipe not found: {path}")
        try:
            layers += [(f, _with_group_defaults(layer)) for f, layer in read_chain(path)[0]]
        except RecipeFileError as e:
            raise ConfigError(str(e)) from None
    for item in overrides:
        if "=" not in item or item.startswith("="):
            raise ConfigError(f"override {item!r} is not key=value")
    try:
        dotlist = OmegaConf.to_container(OmegaConf.from_dotlist(list(overrides)))
    except OmegaConfBaseException as e:
        raise ConfigError(f"bad override: {_one_line(e)}") from None
    layers.append((None, _with_group_defaults(dotlist)))
    try:
        merged = OmegaConf.merge(schema, *(layer for _, layer in layers))
    except OmegaConfBaseException:
        merged = schema  # merged again layer by layer (each merge copies the schema): a base's mistake names its file
        for source, layer in layers:
            where = f"{source}: " if source is not None else ""
            try:
                merged = OmegaConf.merge(merged, layer)
            except ConfigKeyError as e:
                raise ConfigError(
                    f"{where}unknown recipe key '{e.full_key}'{_did_you_mean(e.full_key, schema)}"
                ) from None
            except OmegaConfBaseException as e:
                raise ConfigError(f"{where}recipe key {_one_line(e)}") from None
    try:
        cfg = OmegaConf.to_object(merged)  # runs each section's __post_init__ validation
    except OmegaConfBaseException as e:
        raise ConfigError(f"recipe key {_one_line(e)}") from None
    except (ValueError, TypeError) as e:
        raise ConfigError(str(e).strip().splitlines()[0]) from None
    validate(cfg)
    return cfg


def _with_group_defaults(layer: dict) -> dict:
    """One file's (or the override list's) keys with its `probes.every_n_steps` / `probes.prefill_chunk`
    copied into the probes it leaves unset (probes/registry.py GROUP_KEYS)."""
    from stuffed_mamba.probes.registry import inherit_group_defaults

    return {**layer, "probes": inherit_group_defaults(layer["probes"])} if "probes" in layer else layer


# names other tools (Lightning, transformers, mamba_ssm) give to our keys
_ALIASES = {
    "learning_rate": "optim.lr",
    "gradient_clip_val": "optim.grad_clip",
    "max_epochs": "trainer.max_steps",
    "hidden_size": "model.d_model",
    "num_hidden_layers": "model.n_layer",
    "state_size": "model.d_state",
    "n_layers": "model.n_layer",
    "num_layers": "model.n_layer",
    "head_dim": "model.headdim",
    "seq_len": "data.train_length",
    "max_seq_len": "data.train_length",
    "micro_batch_size": "data.batch_size",
}


def _did_you_mean(key: str, schema) -> str:
    """ "; did you mean optim.lr?" for the valid key nearest to `key` (whole key, else its last part)."""
    import difflib

    from omegaconf import DictConfig

    def keys(node, prefix=""):
        for k, v in node.items_ex(resolve=False) if isinstance(node, DictConfig) else ():
            yield from keys(v, f"{prefix}{k}.") if isinstance(v, DictConfig) else [f"{prefix}{k}"]

    valid = list(keys(schema))
    leaf = key.rsplit(".", 1)[-1]
    if leaf in _ALIASES:
        return f"; did you mean {_ALIASES[leaf]}?"
    near = difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
    if not near:  # a known name in the wrong place or misspelt: compare the last parts
        near = [
            k
            for k in valid
            if k.rsplit(".", 1)[-1]
            in difflib.get_close_matches(leaf, [v.rsplit(".", 1)[-1] for v in valid], n=1, cutoff=0.75)
        ][:1]
    return f"; did you mean {near[0]}?" if near else ""


def resolved(cfg: RecipeConfig, tokenizer_vocab: int | None = None) -> RecipeConfig:
    """A copy whose `model:` shows the values the run will use: the fields left null take
    `init_from`'s config.json (when it is on disk or in the HuggingFace cache) or
    Mamba2Config's defaults, and `vocab_size` the tokenizer's."""
    import copy

    out = copy.deepcopy(cfg)
    m = out.model
    base: Mamba2Config | None = None
    if m.init_from:  # its config.json on disk or in the HF cache, or an official size known by its name
        from stuffed_mamba.model.io import config_of

        base = config_of(m.init_from)
    else:
        fields = mamba2_overrides(m)
        if tokenizer_vocab is not None:
            fields.setdefault("vocab_size", tokenizer_vocab)
        try:
            base = Mamba2Config(**fields)
        except (TypeError, ValueError):
            base = None
    if base is not None:
        for f in dataclasses.fields(base):
            if f.init and hasattr(m, f.name) and getattr(m, f.name) is None:
                value = getattr(base, f.name)
                setattr(m, f.name, list(value) if isinstance(value, tuple) else value)
    if out.trainer.max_steps is None:
        out.trainer.max_steps = out.optim.total_steps
    return out


def to_yaml(cfg: RecipeConfig) -> str:
    from omegaconf import OmegaConf

    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def to_dict(cfg: RecipeConfig) -> dict:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(OmegaConf.structured(cfg))


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


def mamba2_overrides(model: Any) -> dict:
    """The Mamba2Config fields the recipe sets (None means: not set); lists as the tuples Mamba2Config holds."""
    return {
        f.name: tuple(v) if isinstance(v := getattr(model, f.name), list) else v
        for f in dataclasses.fields(model)
        if f.name not in MODEL_BUILD_KEYS and getattr(model, f.name) is not None
    }
