"""An official mamba_ssm or transformers Mamba2 checkpoint folder: its `config.json` read and parsed
(through `Mamba2Config.from_mamba_ssm` / `from_hf`, the one mapping of their field names), its weights
read (safetensors, sharded safetensors or `pytorch_model.bin`, weights only) under our key names, and
`load_strict`, which puts a state dict into a model with every key accounted for. `model.io` reads
every other kind of checkpoint and builds models; this module builds none, so `Mamba2LM.from_pretrained`
can use it without a circle."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

from stuffed_mamba.model.config import OFFICIAL_SIZES, Mamba2Config

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def load_strict(model, sd: dict, where):
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


def read_folder(path_or_hub_name, *, map_location="cpu") -> tuple[Mamba2Config, dict, Path]:
    """(config, state_dict with our key names, local folder) of an official mamba_ssm or transformers
    Mamba2 folder or hub name; `Mamba2LM.from_pretrained` builds the model from them."""
    from stuffed_mamba.model.pretrained import resolve_folder

    folder = resolve_folder(path_or_hub_name)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{folder}: not a checkpoint folder (no config.json)")
    raw = _read_json(folder / "config.json")
    config = config_from_json(raw, where=folder / "config.json")
    sd = _read_weights(folder, map_location)
    if "hidden_size" in raw:  # transformers names the embedding `embeddings`
        sd = {_hf_key(k): v for k, v in sd.items()}
    return config, sd, folder


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
        return Mamba2Config.from_hf(raw)
    if "d_model" in raw:
        return Mamba2Config.from_mamba_ssm(raw)
    raise ValueError(f"{where}: neither a mamba_ssm config (d_model) nor a transformers one (hidden_size)")
