"""Checkpoint folders: mamba_ssm's layout and HuggingFace transformers' Mamba2 layout, saved here and
read by `stuffed_mamba.model.io` (the one reader); hub names resolved to such folders.

mamba_ssm:    config.json {d_model, n_layer, vocab_size, ssm_cfg, ...} + pytorch_model.bin | model.safetensors,
              keys backbone.embedding.weight, backbone.layers.{i}.(norm|mixer.*), backbone.norm_f.weight, lm_head.weight
transformers: config.json {hidden_size, num_hidden_layers, state_size, head_dim, n_groups, ...}, keys with
              backbone.embeddings.weight; save_pretrained omits a tied lm_head.weight.

Wherever a folder is accepted, a HuggingFace hub name (OWNER/NAME, e.g. state-spaces/mamba2-370m) is too:
`resolve_folder` finds it in the local HuggingFace cache (HF_HUB_CACHE) or downloads it, and with
HF_HUB_OFFLINE=1 looks in the cache only.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

# what a hub snapshot needs to be loaded here and probed: config, weights (one file or shards), tokenizer
HUB_FILES = [
    "config.json",
    "*.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
]
_HUB_NAME = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*")


def is_hub_name(spec) -> bool:
    """OWNER/NAME as the HuggingFace hub spells repository ids (no absolute or ./ paths)."""
    s = str(spec)
    return bool(_HUB_NAME.fullmatch(s)) and not s.endswith((".ckpt", ".pt", ".bin", ".json", ".safetensors"))


def resolve_folder(spec) -> Path:
    """The local path `spec` names when it exists; else the snapshot folder of the hub model `spec`
    (OWNER/NAME) from the HuggingFace cache, downloaded first unless HF_HUB_OFFLINE is set.
    Raises FileNotFoundError with a one-line message."""
    path = Path(spec).expanduser()
    if path.exists():
        return path
    if not is_hub_name(spec):
        raise FileNotFoundError(f"checkpoint not found: {spec}")
    import huggingface_hub as hub
    from huggingface_hub import constants

    try:
        return Path(hub.snapshot_download(str(spec), allow_patterns=HUB_FILES))
    except Exception as e:  # noqa: BLE001 - offline, unknown repo, gated, network: all say the same to a user
        if constants.HF_HUB_OFFLINE:
            raise FileNotFoundError(
                f"{spec}: no such local folder, and not in the HuggingFace cache ({constants.HF_HUB_CACHE}) while "
                f"HF_HUB_OFFLINE is set: download it first (hf download {spec}) or give a checkpoint folder"
            ) from None
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise FileNotFoundError(
            f"{spec}: no such local folder, and not loadable from the HuggingFace hub: {first}"
        ) from None


def save_pretrained(model, path, *, format: str = "mamba_ssm") -> None:
    from safetensors.torch import save_file

    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    sd = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    c = model.config
    if format == "mamba_ssm":
        cfg = c.to_mamba_ssm()
    elif format == "hf":
        cfg = c.to_hf()
        sd = {
            ("backbone.embeddings." + k[len("backbone.embedding.") :] if k.startswith("backbone.embedding.") else k): v
            for k, v in sd.items()
        }
    else:
        raise ValueError(f"unknown export format {format!r}; use 'mamba_ssm' or 'hf'")
    if c.tie_embeddings:
        sd.pop("lm_head.weight")  # safetensors refuses shared tensors; both loaders re-tie
    (folder / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    save_file(sd, str(folder / "model.safetensors"), metadata={"format": "pt"})
    give_normal_permissions(folder / "model.safetensors")


def give_normal_permissions(path) -> None:
    """safetensors' save_file creates its file -rw------- (nobody else on a shared cluster can read it):
    give it what open() gives a new file, 0o666 minus the umask."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)
