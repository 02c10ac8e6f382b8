"""A trained model leaves as a folder others load without us.

Input: whatever `stuffed_mamba.model.io.load_checkpoint` reads: a Lightning checkpoint of
`stuffed-mamba fit` (`last.ckpt`, a file), a DeepSpeed checkpoint (a folder of ZeRO shards: its
fp32 master weights), a checkpoint folder (`config.json` + weights) or a hub name. Output:

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


def export(checkpoint: str | Path, out: str | Path, format: str = "mamba_ssm", tokenizer: str | None = None) -> Path:
    """`tokenizer`: a `load_tokenizer` spec; default: the run's `data.tokenizer` (or the folder's own)."""
    if format not in FORMATS:
        raise ValueError(f"unknown export format {format!r}; use one of {', '.join(FORMATS)}")
    from stuffed_mamba.model.io import load_checkpoint

    loaded = load_checkpoint(checkpoint)  # a one-line ValueError for a damaged or foreign checkpoint
    model, own = loaded.model, Path(loaded.path) / "tokenizer.json"  # a folder's own tokenizer first
    spec = tokenizer or (str(own) if own.is_file() else ((loaded.recipe or {}).get("data") or {}).get("tokenizer"))
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
