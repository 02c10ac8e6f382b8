"""Load a model to probe from a Lightning checkpoint (.ckpt) or a checkpoint folder.

- A folder with `config.json` (official mamba_ssm or transformers Mamba2, or our
  `save_pretrained`/export) goes through `Mamba2LM.from_pretrained`; so does a HuggingFace
  hub name (OWNER/NAME), found in the HuggingFace cache (HF_HUB_OFFLINE=1: the cache only).
- A Lightning `.ckpt` written by the training module holds the network under
  `state_dict` with the prefix `model.` and its architecture under `mamba2_config`; the
  recipe that made it sits in `{run.dir}/recipe.yaml` (the checkpoint lives in
  `{run.dir}/checkpoints/`), and gives the tokenizer, T_train and the evaluation data.
- A DeepSpeed checkpoint folder (`last.ckpt/` or `step-*.ckpt/` of a `trainer.strategy: deepspeed`
  run, any ZeRO stage) holds the same dict spread over its shards; it is read with its fp32
  master weights (`stuffed_mamba.probes.deepspeed_checkpoint`) and then treated like the file.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

log = logging.getLogger(__name__)

PREFIX = "model."


@dataclass
class LoadedCheckpoint:
    model: torch.nn.Module
    path: str
    kind: str  # "lightning" | "deepspeed" | "folder"
    recipe: dict | None = None  # the run's recipe, when found
    step: int | None = None  # optimiser step of a Lightning checkpoint


def _find_recipe(path: Path) -> dict | None:
    for cand in (path.parent.parent / "recipe.yaml", path.parent / "recipe.yaml", path / "recipe.yaml"):
        if cand.is_file():
            from omegaconf import OmegaConf

            return OmegaConf.to_container(OmegaConf.load(cand), resolve=True)
    return None


def _torch_load(path: Path) -> dict:
    import pickle

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "weights_only" not in str(e):
            raise ValueError(f"cannot read checkpoint {str(path)!r}: {str(e).splitlines()[0]}") from None
    except Exception as e:  # noqa: BLE001 - truncated or foreign files raise many kinds
        raise ValueError(
            f"cannot read checkpoint {str(path)!r}: {str(e).splitlines()[0] if str(e) else type(e).__name__}"
        ) from None
    # Lightning checkpoints also hold loop and data-loader state (plain Python objects)
    log.warning("%s holds non-tensor objects: loaded with weights_only=False (load only checkpoints you trust)", path)
    return torch.load(path, map_location="cpu", weights_only=False)


def load_checkpoint(path, *, backend: str = "torch", device="cpu") -> LoadedCheckpoint:
    from stuffed_mamba.model import Mamba2Config, Mamba2LM
    from stuffed_mamba.model.pretrained import resolve_folder

    p = resolve_folder(path)  # a local path, or a hub name through the HuggingFace cache
    if p.is_dir() and (p / "config.json").is_file():
        model = Mamba2LM.from_pretrained(p, backend=backend)
        return LoadedCheckpoint(model.to(device).eval(), str(p), "folder", _find_recipe(p))
    if p.is_dir():
        from stuffed_mamba.probes.deepspeed_checkpoint import read_deepspeed_checkpoint

        ckpt, kind = read_deepspeed_checkpoint(p), "deepspeed"  # ValueError (one line) if not one
    else:
        ckpt, kind = _torch_load(p), "lightning"
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise ValueError(f"{path} is not a Lightning checkpoint (no 'state_dict')")
    cfg_dict = ckpt.get("mamba2_config")
    if cfg_dict is None and isinstance(ckpt.get("hyper_parameters"), dict):
        cfg_dict = ckpt["hyper_parameters"].get("mamba2_config")
    if cfg_dict is None:
        raise ValueError(f"{path} holds no 'mamba2_config': cannot tell the model's architecture")
    cfg_dict = dict(cfg_dict)
    if "A_init_range" in cfg_dict:
        cfg_dict["A_init_range"] = tuple(cfg_dict["A_init_range"])
    config = Mamba2Config(**cfg_dict)
    sd = {k[len(PREFIX) :]: v for k, v in ckpt["state_dict"].items() if k.startswith(PREFIX)}
    if not sd:
        raise ValueError(f"{path}: no '{PREFIX}*' keys in its state_dict")
    model = Mamba2LM(config, backend=backend)
    missing, unexpected = model.load_state_dict(sd, strict=False)
    if missing or unexpected:
        raise ValueError(f"{path}: state_dict does not match the model: missing {missing}, unexpected {unexpected}")
    return LoadedCheckpoint(model.to(device).eval(), str(p), kind, _find_recipe(p), ckpt.get("global_step"))


def load_model(path, *, backend: str = "torch", device="cpu"):
    """The Mamba2LM of a Lightning checkpoint or a checkpoint folder, in eval mode."""
    return load_checkpoint(path, backend=backend, device=device).model
