"""A trained model leaves as a folder others load without us.

Input: a Lightning checkpoint of `stuffed-mamba fit` (`last.ckpt`, a file), a DeepSpeed
checkpoint (a folder of ZeRO shards: its fp32 master weights), or a checkpoint folder
(`config.json` + weights). Output:

- "mamba_ssm": `config.json` (mamba_ssm's `MambaConfig` fields) + `model.safetensors`
  + `pytorch_model.bin` (the only weights file `MambaLMHeadModel.from_pretrained` reads);
- "hf": a transformers `Mamba2ForCausalLM` folder (`config.json` + `model.safetensors`);

both with the tokenizer the model was trained with (the run's `data.tokenizer`, or `tokenizer=`):
`tokenizer.json` plus a `tokenizer_config.json` naming the class and EOS token, so that
`tokenizers.Tokenizer.from_file` and transformers' `AutoTokenizer.from_pretrained(out)` load it.
Every file gets the permissions a new file gets (0o666 minus the umask).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

FORMATS = ("mamba_ssm", "hf")


def load_trained_model(checkpoint: str | Path, backend: str = "torch"):
    """The `Mamba2LM` inside a training checkpoint (or a checkpoint folder, or a hub name)."""
    return _load(checkpoint, backend)[0]


def _load(checkpoint: str | Path, backend: str = "torch"):
    """(model, recipe or None, the resolved path)."""
    from stuffed_mamba.model import Mamba2Config, Mamba2LM
    from stuffed_mamba.model.pretrained import resolve_folder

    path = resolve_folder(checkpoint)
    if path.is_dir() and (path / "config.json").is_file():
        return Mamba2LM.from_pretrained(path, backend=backend), None, path
    if path.is_dir():  # DeepSpeed: its fp32 master weights; a broken folder is a one-line ValueError
        from stuffed_mamba.probes.deepspeed_checkpoint import read_deepspeed_checkpoint

        ckpt = read_deepspeed_checkpoint(path)
    else:
        try:
            ckpt = _read_lightning_checkpoint(path)
        except Exception as e:  # noqa: BLE001 - a truncated or foreign file raises many kinds
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise ValueError(
                f"cannot read checkpoint {str(path)!r} ({first}): truncated, or not written by "
                f"stuffed-mamba fit; export another one (e.g. a kept step-*.ckpt)"
            ) from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise ValueError(f"{path}: not a Lightning checkpoint (no 'state_dict')")
    if "mamba2_config" not in ckpt:
        raise ValueError(f"{path}: not a stuffed-mamba training checkpoint (no 'mamba2_config')")
    raw = dict(ckpt["mamba2_config"])
    if "A_init_range" in raw:
        raw["A_init_range"] = tuple(raw["A_init_range"])
    model = Mamba2LM(Mamba2Config(**raw), backend=backend)
    prefix = "model."
    sd = {k[len(prefix) :]: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)}
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as e:
        raise ValueError(
            f"{path}: weights do not match its mamba2_config: {str(e).strip().splitlines()[-1].strip()}"
        ) from None
    # bf16-true runs keep bf16 weights (no fp32 master): export them as they are. DeepSpeed folders
    # give their fp32 master weights.
    dtypes = {v.dtype for v in sd.values()}
    if len(dtypes) == 1:
        model.to(next(iter(dtypes)))
    recipe = ckpt.get("recipe")
    if recipe is None:  # checkpoints from before the recipe was stored in them: {run.dir}/recipe.yaml
        for cand in (path.parent.parent / "recipe.yaml", path.parent / "recipe.yaml"):
            if cand.is_file():
                from omegaconf import OmegaConf

                recipe = OmegaConf.to_container(OmegaConf.load(cand), resolve=True)
                break
    return model, recipe, path


def _read_lightning_checkpoint(path: Path) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception:
        # Our checkpoints also hold the data pipeline's position (plain Python objects that the
        # weights-only unpickler refuses). Only load checkpoints you trust.
        return torch.load(path, map_location="cpu", weights_only=False)


def export(checkpoint: str | Path, out: str | Path, format: str = "mamba_ssm", tokenizer: str | None = None) -> Path:
    """`tokenizer`: a `load_tokenizer` spec; default: the run's `data.tokenizer` (or the folder's own)."""
    if format not in FORMATS:
        raise ValueError(f"unknown export format {format!r}; use one of {', '.join(FORMATS)}")
    model, recipe, path = _load(checkpoint)
    spec = tokenizer or ((recipe or {}).get("data") or {}).get("tokenizer")
    if spec is None and path.is_dir() and (path / "tokenizer.json").is_file():
        spec = str(path / "tokenizer.json")
    tok = _load_tokenizer(spec) if spec is not None else None
    out = Path(out)
    model.save_pretrained(out, format=format)
    if format == "mamba_ssm":
        # mamba_ssm's loader reads pytorch_model.bin only, with lm_head.weight present (tied).
        sd = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        torch.save(sd, out / "pytorch_model.bin")
    if tok is not None:
        write_tokenizer(tok, out)
    return out


def _load_tokenizer(spec: str):
    from stuffed_mamba.data import load_tokenizer

    try:
        return load_tokenizer(spec)
    except (OSError, ValueError, RuntimeError) as e:
        raise ValueError(f"tokenizer {spec!r}: {(str(e).strip().splitlines() or [type(e).__name__])[0]}") from None


def write_tokenizer(tok, out: Path) -> bool:
    """tokenizer.json + tokenizer_config.json (what AutoTokenizer needs); False for the byte tokenizer,
    which has no tokenizer.json (its ids are the UTF-8 bytes, EOS = 256)."""
    backend = getattr(tok, "backend", None)
    if backend is None:
        return False
    backend.save(str(out / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "eos_token": tok.eos_token,
        # the training pipeline adds no BOS and appends EOS after each document itself
        "add_bos_token": False,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    return True
