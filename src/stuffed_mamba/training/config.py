"""Recipes: YAML -> a validated `RecipeConfig` (DESIGN section 7). The sections are `schema.py`'s
dataclasses (re-exported here), the checks of values `validate.py`'s.

A recipe is YAML with the sections `model`, `data`, `optim`, `trainer`, `probes`,
`run`, and optionally `base: OTHER.yaml` (its keys merged over that recipe's, see
stuffed_mamba/recipe_file.py); `key=value` overrides from the command line are merged on top. An unknown
key, a wrong type or an impossible value is a one-line `ConfigError` naming the
key, raised before any model or data is built.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from stuffed_mamba.model import Mamba2Config
from stuffed_mamba.training.schema import (
    MODEL_BUILD_KEYS,
    PRECISIONS,
    PROJECT_ROOT,
    ROUNDED_PRECISIONS,
    STRATEGIES,
    ConfigError,
    DeepSpeedSection,
    ModelSection,
    OptimConfig,
    RecipeConfig,
    RunConfig,
    TrainerSection,
)
from stuffed_mamba.training.validate import validate

__all__ = [
    "MODEL_BUILD_KEYS",
    "PRECISIONS",
    "PROJECT_ROOT",
    "ROUNDED_PRECISIONS",
    "STRATEGIES",
    "ConfigError",
    "DeepSpeedSection",
    "ModelSection",
    "OptimConfig",
    "RecipeConfig",
    "RunConfig",
    "TrainerSection",
    "load_recipe",
    "mamba2_overrides",
    "resolved",
    "to_dict",
    "to_yaml",
    "validate",
]


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
        from stuffed_mamba.model.folder import config_of

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


def mamba2_overrides(model: Any) -> dict:
    """The Mamba2Config fields the recipe sets (None means: not set); lists as the tuples Mamba2Config holds."""
    return {
        f.name: tuple(v) if isinstance(v := getattr(model, f.name), list) else v
        for f in dataclasses.fields(model)
        if f.name not in MODEL_BUILD_KEYS and getattr(model, f.name) is not None
    }
