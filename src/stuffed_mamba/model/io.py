"""One way to read a checkpoint: every `torch.load` of one and every `config.json` parse live here.

`load_checkpoint(path_or_hub_name)` reads, into an eval-ready `Mamba2LM` with its recipe and step:

- a folder with `config.json`: official mamba_ssm (`d_model`, `ssm_cfg`; `pytorch_model.bin` or
  safetensors) or transformers Mamba2 (`hidden_size`, keys with `embeddings`, no vocabulary
  padding), our `save_pretrained` and `export` included; a hub name OWNER/NAME resolves to such a
  folder in the HuggingFace cache (`pretrained.resolve_folder`; HF_HUB_OFFLINE=1: the cache only);
- a Lightning `.ckpt` file of `stuffed-mamba fit`: the network under `state_dict` with the prefix
  `model.`, its architecture under `mamba2_config`, the recipe that wrote it under `recipe`
  (older files: `{run.dir}/recipe.yaml`, the checkpoint living in `{run.dir}/checkpoints/`);
- a DeepSpeed checkpoint folder of any ZeRO stage: the same dict with its fp32 master weights
  (`model.deepspeed_checkpoint`).

A `.ckpt` file or a DeepSpeed folder is verified (`integrity.verify_checkpoint`) before it is read;
its `CheckpointDamaged` (one line) reaches the user as it is. Weights load strictly: missing or
unexpected keys are one line naming them. This module imports no torch until a checkpoint is read,
so the recipe tools and the state-size calculator parse `config.json` here without loading it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stuffed_mamba.model.config import OFFICIAL_SIZES, Mamba2Config

log = logging.getLogger(__name__)

PREFIX = "model."  # the training module holds the network as `self.model`
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


@dataclass
class LoadedCheckpoint:
    model: Any  # Mamba2LM in eval mode
    path: str  # the local path read (a hub name's snapshot folder)
    kind: str  # "lightning" | "deepspeed" | "folder"
    recipe: dict | None = None  # the recipe of the run that wrote it, when known
    step: int | None = None  # the optimiser step of a training checkpoint


def load_checkpoint(path_or_hub_name, *, backend: str = "torch", device="cpu") -> LoadedCheckpoint:
    """Any checkpoint the project writes or accepts (see the module docstring), strictly.

    Raises FileNotFoundError or ValueError with a one-line message."""
    from stuffed_mamba.model.pretrained import resolve_folder

    path = resolve_folder(path_or_hub_name)
    if path.is_dir() and (path / "config.json").is_file():
        model, kind, ckpt = load_folder(path, backend=backend), "folder", {}
    else:
        ckpt = read_checkpoint_dict(path, weights=True)
        kind = "deepspeed" if path.is_dir() else "lightning"
        model = _model_from_training_dict(ckpt, path, backend)
    recipe = ckpt.get("recipe") or _recipe_beside(path)
    return LoadedCheckpoint(model.to(device).eval(), str(path), kind, recipe, ckpt.get("global_step"))


def read_checkpoint_dict(path, *, weights: bool = False) -> dict:
    """Lightning's checkpoint dict of a `.ckpt` file or a DeepSpeed folder, verified first.

    A file's tensors are memory-mapped (only its pickled objects are read now). A DeepSpeed folder
    gives its client state (`global_step`, `mamba2_config`, `recipe`, ...), plus with `weights` its
    fp32 master weights as `state_dict`. Raises ValueError (one line; `CheckpointDamaged` is one)."""
    from stuffed_mamba.model.integrity import verify_checkpoint

    path = Path(path)
    verify_checkpoint(path)
    if path.is_dir():
        from stuffed_mamba.model import deepspeed_checkpoint as ds

        return ds.read_deepspeed_checkpoint(path) if weights else ds.read_client_state(path)
    return _read_file(path)


def _read_file(path: Path) -> dict:
    import pickle

    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as e:
        if "weights_only" not in str(e):
            raise ValueError(_unreadable(path, e)) from None
    except Exception as e:  # noqa: BLE001 - truncated or foreign files raise many kinds
        raise ValueError(_unreadable(path, e)) from None
    # checkpoints of other Lightning versions may hold plain Python objects the weights-only unpickler refuses
    log.warning("%s holds non-tensor objects: loaded with weights_only=False (load only checkpoints you trust)", path)
    return torch.load(path, map_location="cpu", weights_only=False, mmap=True)


def _unreadable(path: Path, e: BaseException) -> str:
    first = (str(e).strip().splitlines() or [type(e).__name__])[0]
    return (
        f"cannot read checkpoint {str(path)!r} ({first}): truncated, or not written by stuffed-mamba fit; "
        f"use another one (e.g. a kept step-*.ckpt)"
    )


def _model_from_training_dict(ckpt, path: Path, backend: str):
    from stuffed_mamba.model.lm import Mamba2LM

    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise ValueError(f"{path}: not a Lightning checkpoint (no 'state_dict')")
    raw = ckpt.get("mamba2_config") or (ckpt.get("hyper_parameters") or {}).get("mamba2_config")
    if raw is None:
        raise ValueError(f"{path}: not a stuffed-mamba training checkpoint (no 'mamba2_config'): architecture unknown")
    try:
        config = Mamba2Config(**raw)
    except TypeError as e:
        raise ValueError(f"{path}: mamba2_config: {e}") from None
    sd = {k.removeprefix(PREFIX): v for k, v in ckpt["state_dict"].items() if k.startswith(PREFIX)}
    if not sd:
        raise ValueError(f"{path}: no '{PREFIX}*' keys in its state_dict")
    return _load_strict(Mamba2LM(config, backend=backend), sd, path)


def _load_strict(model, sd: dict, where):
    """`model` with the weights `sd`; every key accounted for, or a one-line error naming them."""
    import torch

    if model.config.tie_embeddings:
        # tied: one tensor under both names; some savers omit lm_head.weight, some keep it
        emb = sd.get("backbone.embedding.weight")
        head = sd.pop("lm_head.weight", None)
        if emb is not None and head is not None and not torch.equal(emb, head):
            raise ValueError(f"{where}: tie_embeddings is set but lm_head.weight differs from the embedding")
        sd["lm_head.weight"] = emb if emb is not None else head
    expected = set(model.state_dict())
    missing, unexpected = sorted(expected - set(sd)), sorted(set(sd) - expected)
    if missing or unexpected:
        raise ValueError(
            f"{where}: checkpoint does not match the config: missing keys {missing[:8]}"
            f"{'...' if len(missing) > 8 else ''}, unexpected keys {unexpected[:8]}{'...' if len(unexpected) > 8 else ''}"
        )
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as e:  # a shape that differs from the config's
        raise ValueError(f"{where}: checkpoint does not match the config: {str(e).strip().splitlines()[-1]}") from None
    return model


def _recipe_beside(path: Path) -> dict | None:
    """`{run.dir}/recipe.yaml` for `{run.dir}/checkpoints/x.ckpt` (or a folder in or beside it)."""
    for cand in (path.parent.parent / "recipe.yaml", path.parent / "recipe.yaml", path / "recipe.yaml"):
        if cand.is_file():
            from omegaconf import OmegaConf

            return OmegaConf.to_container(OmegaConf.load(cand), resolve=True)
    return None


# ------------------------------------------------------------------------------ checkpoint folders


def load_folder(path_or_hub_name, *, backend: str = "torch", map_location="cpu"):
    """The `Mamba2LM` of an official mamba_ssm or transformers Mamba2 folder (`Mamba2LM.from_pretrained`)."""
    from stuffed_mamba.model.lm import Mamba2LM
    from stuffed_mamba.model.pretrained import resolve_folder

    folder = resolve_folder(path_or_hub_name)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{folder}: not a checkpoint folder (no config.json)")
    raw = _read_json(folder / "config.json")
    config = config_from_json(raw, where=folder / "config.json")
    sd = _read_weights(folder, map_location)
    if "hidden_size" in raw:  # transformers names the embedding `embeddings`
        sd = {_hf_key(k): v for k, v in sd.items()}
    return _load_strict(Mamba2LM(config, backend=backend), sd, folder)


def _read_weights(folder: Path, map_location) -> dict:
    for name in WEIGHT_FILES:
        f = folder / name
        if f.exists():
            if name.endswith(".safetensors"):
                from safetensors.torch import load_file

                return load_file(str(f), device=str(map_location))
            import torch

            return torch.load(f, map_location=map_location, weights_only=True)
    shards = sorted(folder.glob("model-*.safetensors"))
    if shards:
        from safetensors.torch import load_file

        return {k: v for f in shards for k, v in load_file(str(f), device=str(map_location)).items()}
    raise FileNotFoundError(f"{folder}: no weights ({' or '.join(WEIGHT_FILES)})")


def _hf_key(k: str) -> str:
    return "backbone.embedding." + k.removeprefix("backbone.embeddings.") if k.startswith("backbone.embeddings.") else k


# ------------------------------------------------------------------------------ config.json


def read_config(path) -> Mamba2Config:
    """The Mamba2Config of a `config.json` (official or transformers), or of the folder holding one."""
    path = Path(path)
    file = path / "config.json" if path.is_dir() else path
    return config_from_json(_read_json(file), where=file)


def config_of(spec) -> Mamba2Config | None:
    """The architecture a checkpoint folder or hub name gives without reading weights or downloading:
    its config.json on disk or in the HuggingFace cache, else an official checkpoint known by its
    name (checkpoints/mamba2-370m, state-spaces/mamba2-370m); None when neither."""
    from stuffed_mamba.model.pretrained import is_hub_name

    local = Path(str(spec)).expanduser() / "config.json"
    if local.is_file():
        return read_config(local)
    if is_hub_name(spec):
        import huggingface_hub as hub

        cached = hub.try_to_load_from_cache(str(spec), "config.json")
        if isinstance(cached, str):
            return read_config(cached)
    official = Path(str(spec).rstrip("/")).name.lower().removeprefix("mamba2-")
    return Mamba2Config(**OFFICIAL_SIZES[official]) if official in OFFICIAL_SIZES else None


def _read_json(file: Path) -> dict:
    try:
        raw = json.loads(Path(file).read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{file}: not valid JSON ({e.msg}, line {e.lineno})") from None
    if not isinstance(raw, dict):
        raise ValueError(f"{file}: not a config (a JSON object is expected)")
    return raw


def config_from_json(raw: Mapping, *, where="config.json") -> Mamba2Config:
    """The one parser: a transformers Mamba2 config (`hidden_size`) or an official one (`d_model`)."""
    if "hidden_size" in raw:
        return config_from_hf(raw)
    if "d_model" in raw:
        return config_from_mamba_ssm(raw)
    raise ValueError(f"{where}: neither a mamba_ssm config (d_model) nor a transformers one (hidden_size)")


def config_from_mamba_ssm(cfg: Mapping) -> Mamba2Config:
    """An official checkpoint's config.json (state-spaces/mamba2-*): MambaConfig + its ssm_cfg."""
    ssm_cfg = dict(cfg.get("ssm_cfg") or {})
    layer = ssm_cfg.pop("layer", "Mamba2")
    if layer != "Mamba2":
        raise ValueError(f"config.json describes a {layer} model; only Mamba2 is supported")
    if cfg.get("d_intermediate", 0):
        raise ValueError("config.json has d_intermediate > 0 (MLP blocks); only pure Mamba-2 stacks are supported")
    if cfg.get("attn_layer_idx"):
        raise ValueError("config.json has attention layers (attn_layer_idx); only pure Mamba-2 stacks are supported")
    ssm_keys = (*Mamba2Config._SSM_CFG_KEYS, "dt_min", "dt_max", "dt_init_floor", "A_init_range")
    kw = {k: ssm_cfg[k] for k in ssm_keys if k in ssm_cfg}
    top = ("d_model", "n_layer", "vocab_size", "pad_vocab_size_multiple", "tie_embeddings")
    kw |= {k: cfg[k] for k in top if k in cfg}
    return Mamba2Config(**kw)


def config_from_hf(cfg: Mapping) -> Mamba2Config:
    """A transformers Mamba2 config.json (their `Mamba2Config` field names)."""
    d_model, expand, head_dim = cfg["hidden_size"], cfg.get("expand", 2), cfg.get("head_dim", 64)
    num_heads = cfg.get("num_heads", expand * d_model // head_dim)
    if num_heads * head_dim != expand * d_model:
        raise ValueError(
            f"HF config: num_heads*head_dim = {num_heads * head_dim} != expand*hidden_size = {expand * d_model}"
        )
    if cfg.get("use_bias", False):
        raise ValueError("HF config has use_bias=true (biased in/out projections); official Mamba-2 has none")
    if not cfg.get("use_conv_bias", True):
        raise ValueError("HF config has use_conv_bias=false; official Mamba-2 has a conv bias")
    return Mamba2Config(
        d_model=d_model,
        n_layer=cfg["num_hidden_layers"],
        vocab_size=cfg["vocab_size"],
        pad_vocab_size_multiple=1,  # transformers does not pad: the embedding has exactly vocab_size rows
        d_state=cfg.get("state_size", 128),
        d_conv=cfg.get("conv_kernel", 4),
        expand=expand,
        headdim=head_dim,
        ngroups=cfg.get("n_groups", 1),
        chunk_size=cfg.get("chunk_size", 256),
        rms_norm_eps=cfg.get("layer_norm_epsilon", 1e-5),
        tie_embeddings=cfg.get("tie_word_embeddings", True),
    )
