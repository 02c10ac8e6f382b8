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

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stuffed_mamba.model.config import Mamba2Config
from stuffed_mamba.model.folder import load_strict

log = logging.getLogger(__name__)

PREFIX = "model."  # the training module holds the network as `self.model`


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
    from stuffed_mamba.model.lm import Mamba2LM
    from stuffed_mamba.model.pretrained import resolve_folder

    path = resolve_folder(path_or_hub_name)
    if path.is_dir() and (path / "config.json").is_file():
        model, kind, ckpt = Mamba2LM.from_pretrained(path, backend=backend), "folder", {}
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
    return load_strict(Mamba2LM(config, backend=backend), sd, path)


def _recipe_beside(path: Path) -> dict | None:
    """`{run.dir}/recipe.yaml` for `{run.dir}/checkpoints/x.ckpt` (or a folder in or beside it)."""
    for cand in (path.parent.parent / "recipe.yaml", path.parent / "recipe.yaml", path / "recipe.yaml"):
        if cand.is_file():
            from omegaconf import OmegaConf

            return OmegaConf.to_container(OmegaConf.load(cand), resolve=True)
    return None
