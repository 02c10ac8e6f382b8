"""The episode loader as a LightningDataModule, built once the ranks are known."""

from __future__ import annotations

from collections.abc import Callable

import lightning as L


class EpisodeDataModule(L.LightningDataModule):
    """Builds `stuffed_mamba.data.build_dataloader(cfg, rank=, world_size=)` in `train_dataloader`,
    after the strategy has set the ranks (under DDP every process builds its own shard of data).

    `factory(rank, world_size)` replaces the real pipeline (tests use small fakes). Under context
    parallelism over N ranks, the N ranks of a group are one data rank: rank // N of world_size // N.
    """

    def __init__(self, data_cfg, factory: Callable | None = None, context_parallel: int = 1):
        super().__init__()
        self.data_cfg = data_cfg
        self.factory = factory
        self.context_parallel = context_parallel
        self.loader = None

    def train_dataloader(self):
        from stuffed_mamba.training.context_parallel import data_rank

        rank, world = data_rank(self.trainer.global_rank, self.trainer.world_size, self.context_parallel)
        if self.factory is not None:
            self.loader = self.factory(rank, world)
        else:
            from stuffed_mamba.data import build_dataloader

            self.loader = build_dataloader(self.data_cfg, rank=rank, world_size=world)
        return self.loader
