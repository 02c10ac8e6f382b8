"""Finite epochs under torch.distributed: ranks that run dry at different episodes stop together."""

import os

import torch.multiprocessing as mp
from stuffed_mamba.data import DataConfig, build_dataloader

from tests.helpers import free_port


def _cfg(corpus):
    return DataConfig(source=str(corpus), tokenizer="bytes", min_doc_tokens=300, train_length=64, segments=3,
                      epochs=1, shuffle_shards=False)  # fmt: skip


def _rank(rank, port, corpus, out):
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        out[rank] = sum(1 for _ in build_dataloader(_cfg(corpus), rank=rank, world_size=2))
    finally:
        dist.destroy_process_group()


def test_ranks_stop_together(corpus):
    alone = [sum(1 for _ in build_dataloader(_cfg(corpus), rank=r, world_size=2)) for r in range(2)]
    assert alone[0] != alone[1]  # the two ranks' shards hold different amounts of text
    port = free_port()
    out = mp.Manager().dict()
    mp.start_processes(_rank, args=(port, str(corpus), out), nprocs=2, join=True, start_method="fork")
    assert out[0] == out[1] == min(alone)
