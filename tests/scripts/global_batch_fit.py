"""Test-only: TBPTTModule on the CPU with 1 or 2 DDP ranks over one fixed global batch per episode.

    python -m tests.scripts.global_batch_fit OUT --devices N [--bptt full] [--episodes K]

Episode i is a global batch [4, S, T+1] that depends on i alone; with N ranks, rank r trains on
rows r*4/N .. (r+1)*4/N - 1 of it. DDP averages the ranks' gradients of their row means, which is
the gradient of the global mean: 1 and 2 ranks must end with the same weights. Rank 0 writes
OUT/weights.pt; every rank writes OUT/allreduce_rank{R}.txt (DDP all-reduces per episode).
Lightning re-launches this same command for rank 1.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import lightning as L
import torch

from tests.scripts.hooked_fit import CountAllReduce
from tests.training.common import bare_trainer, tiny_module

GLOBAL_BATCH, S, T, VOCAB = 4, 3, 21, 32


class GlobalBatchLoader:
    def __init__(self, episodes: int):
        self.episodes = episodes

    def __iter__(self):
        dist = torch.distributed
        rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
        rows = GLOBAL_BATCH // world
        for i in range(self.episodes):
            g = torch.Generator().manual_seed(1000 + i)
            episode = torch.randint(0, VOCAB, (GLOBAL_BATCH, S, T + 1), generator=g)
            yield episode[rank * rows : (rank + 1) * rows]

    def __len__(self):
        return self.episodes


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("out", type=Path)
    p.add_argument("--devices", type=int, default=1)
    p.add_argument("--bptt", default="full")
    p.add_argument("--episodes", type=int, default=3)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    module = tiny_module(optimizer_step="episode", bptt=args.bptt)
    callbacks = [CountAllReduce(args.out)] if args.devices > 1 else []
    strategy = "ddp" if args.devices > 1 else "auto"
    trainer = bare_trainer(args.episodes, devices=args.devices, strategy=strategy, callbacks=callbacks)
    trainer.fit(module, train_dataloaders=GlobalBatchLoader(args.episodes))
    if trainer.is_global_zero:
        args.out.mkdir(parents=True, exist_ok=True)
        torch.save({n: p.detach().clone() for n, p in module.model.named_parameters()}, args.out / "weights.pt")
    return 0


if __name__ == "__main__":
    L.seed_everything(0, verbose=False)
    sys.exit(main())
