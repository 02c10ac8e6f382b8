"""`stuffed-mamba export CHECKPOINT OUT [--format mamba_ssm|hf]`: a trained model as a loadable folder."""

from __future__ import annotations

import argparse

from stuffed_mamba.cli import CLIError


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "export",
        help="write a trained model as a mamba_ssm or transformers folder",
        description="Export a training checkpoint (last.ckpt, a DeepSpeed checkpoint folder, or a checkpoint "
        "folder) to OUT: 'mamba_ssm' (config.json + model.safetensors + pytorch_model.bin, what "
        "MambaLMHeadModel.from_pretrained reads) or 'hf' (transformers Mamba2ForCausalLM); with the "
        "run's tokenizer (tokenizer.json + tokenizer_config.json), so the folder is self-contained.",
    )
    p.add_argument("checkpoint")
    p.add_argument("out")
    p.add_argument("--format", choices=("mamba_ssm", "hf"), default="mamba_ssm")
    p.add_argument("--tokenizer", help="tokenizer to include (default: the run's data.tokenizer)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from stuffed_mamba.training.export import export

    try:
        out = export(args.checkpoint, args.out, format=args.format, tokenizer=args.tokenizer)
    except (FileNotFoundError, ValueError) as e:
        raise CLIError(str(e).splitlines()[0]) from None
    tok = (
        "with its tokenizer"
        if (out / "tokenizer.json").is_file()
        else "without a tokenizer (byte tokenizer, or none known: --tokenizer SPEC)"
    )
    print(f"exported {args.checkpoint} -> {out} ({args.format}, {tok})")
    return 0
