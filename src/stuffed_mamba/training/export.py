"""A trained model leaves as a folder others load without us.

Input: a Lightning checkpoint of `stuffed-mamba fit` (`last.ckpt`, a file), a DeepSpeed
checkpoint (a folder of ZeRO shards, consolidated to fp32 here), or a checkpoint folder
(`config.json` + weights). Output:

- "mamba_ssm": `config.json` (mamba_ssm's `MambaConfig` fields) + `model.safetensors`
  + `pytorch_model.bin` (the only weights file `MambaLMHeadModel.from_pretrained` reads);
- "hf": a transformers `Mamba2ForCausalLM` folder (`config.json` + `model.safetensors`).
"""

from __future__ import annotations

from pathlib import Path

import torch

FORMATS = ("mamba_ssm", "hf")


def load_trained_model(checkpoint: str | Path, backend: str = "torch"):
    """The `Mamba2LM` inside a training checkpoint (or a checkpoint folder)."""
    from stuffed_mamba.model import Mamba2Config, Mamba2LM

    path = Path(checkpoint)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.is_dir() and (path / "config.json").is_file():
        return Mamba2LM.from_pretrained(path, backend=backend)
    ckpt = _read_lightning_checkpoint(path)
    if "mamba2_config" not in ckpt:
        raise ValueError(f"{path}: not a stuffed-mamba training checkpoint (no 'mamba2_config')")
    raw = dict(ckpt["mamba2_config"])
    if "A_init_range" in raw:
        raw["A_init_range"] = tuple(raw["A_init_range"])
    model = Mamba2LM(Mamba2Config(**raw), backend=backend)
    prefix = "model."
    sd = {k[len(prefix):]: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)}
    model.load_state_dict(sd, strict=True)
    # bf16-true and DeepSpeed-bf16 runs keep bf16 weights: export them as they are.
    dtypes = {v.dtype for v in sd.values()}
    if len(dtypes) == 1:
        model.to(next(iter(dtypes)))
    return model


def _read_lightning_checkpoint(path: Path) -> dict:
    if path.is_dir():  # DeepSpeed: ZeRO shards -> one fp32 state dict plus Lightning's client state
        import tempfile

        from lightning.pytorch.utilities.deepspeed import convert_zero_checkpoint_to_fp32_state_dict

        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "consolidated.pt"
            return convert_zero_checkpoint_to_fp32_state_dict(str(path), str(out))
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception:
        # Our checkpoints also hold the data pipeline's position (plain Python objects that the
        # weights-only unpickler refuses). Only load checkpoints you trust.
        return torch.load(path, map_location="cpu", weights_only=False)


def export(checkpoint: str | Path, out: str | Path, format: str = "mamba_ssm") -> Path:
    if format not in FORMATS:
        raise ValueError(f"unknown export format {format!r}; use one of {', '.join(FORMATS)}")
    model = load_trained_model(checkpoint)
    out = Path(out)
    model.save_pretrained(out, format=format)
    if format == "mamba_ssm":
        # mamba_ssm's loader reads pytorch_model.bin only, with lm_head.weight present (tied).
        sd = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        torch.save(sd, out / "pytorch_model.bin")
    return out
