"""A randomly initialised checkpoint folder of the official 130M's shape (mamba_ssm layout), so that the
130M recipe can run where the official weights are not downloaded (memory and speed do not depend on them).

    python benchmarks/random_checkpoint.py checkpoints/mamba2-130m-random [--n-layer 24]
    stuffed-mamba fit recipes/mamba2_130m_256k.yaml model.init_from=checkpoints/mamba2-130m-random ...
"""

from __future__ import annotations

import argparse

import torch

from stuffed_mamba.model import Mamba2Config, Mamba2LM


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folder")
    p.add_argument("--n-layer", type=int, default=24)
    args = p.parse_args()
    torch.manual_seed(0)
    Mamba2LM(Mamba2Config(n_layer=args.n_layer)).save_pretrained(args.folder, format="mamba_ssm")
    print(f"wrote {args.folder}")


if __name__ == "__main__":
    main()
