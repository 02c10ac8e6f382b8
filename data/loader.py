"""`build_dataloader(cfg, rank=, world_size=)`: a resumable loader of episodes [B, S, T+1]."""

from __future__ import annotations

import os
import warnings

import torch
from torchdata.stateful_dataloader import StatefulDataLoader

from . import counters as ctr
from .dataset import EpisodeDataset


def _worker_init(_):
    # W worker processes already use the cores; Rust threads per worker would oversubscribe them
    os.environ["TOKENIZERS_PARALLELISM"] = "false"


class EpisodeLoader(StatefulDataLoader):
    """A torchdata StatefulDataLoader (state_dict / load_state_dict) with `counters()`.

    With num_workers = W > 1 the loader takes episodes from the workers in turn, so a batch
    row continues its own token stream every W-th episode (every episode when W <= 1).
    """

    def counters(self) -> dict[str, int]:
        """Documents read, kept and skipped (and why), summed over this rank's workers, as of
        the last episode handed out; see stuffed_mamba.data.counters for the names."""
        if self.num_workers == 0:
            live = self.dataset.live
            return ctr.summary(live.counters() if live is not None else ctr.new_counters())
        if self._iterator is None:  # state_dict() would start the workers
            return ctr.summary(ctr.new_counters())
        snap = self.state_dict().get("_snapshot", {}).get("_worker_snapshots", {})
        streams = []
        for wstate in snap.values():
            it = ((wstate or {}).get("fetcher_state") or {}).get("dataset_iter_state")
            streams += [row["stream"]["counters"] for row in (it or {}).get("rows", {}).values()]
        return ctr.summary(ctr.merge(streams))

    def __iter__(self):
        it = super().__iter__()
        if self.dataset.cfg.epochs is None or not _distributed():
            return it
        return _all_stop_together(it)


def _distributed() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _all_stop_together(it):
    """Finite epochs: ranks run dry at different episodes; stop all at the first so that no
    rank waits forever in a collective."""
    import torch.distributed as dist

    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
    while True:
        item = next(it, None)
        flag = torch.tensor([0 if item is None else 1], device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
        if flag.item() == 0:
            return
        yield item


def build_dataloader(cfg, *, rank: int = 0, world_size: int = 1) -> EpisodeLoader:
    """Episodes [B, S, T+1] (LongTensor) for one rank of `world_size`.

    Default `cfg.epochs = None` cycles over the shards forever (a fresh seeded order per
    epoch, counted in counters()["epochs"]), so every rank yields as many episodes as asked;
    with finite epochs all ranks stop together at the first rank that runs dry.
    """
    ds = EpisodeDataset(cfg, rank=rank, world_size=world_size)
    with warnings.catch_warnings():  # torchdata 0.11 calls a deprecated torch API in its constructor
        warnings.filterwarnings("ignore", message=".*set_vital.*")
        return EpisodeLoader(
            ds,
            batch_size=None,  # the dataset yields whole episodes
            num_workers=cfg.num_workers,
            worker_init_fn=_worker_init if cfg.num_workers > 0 else None,
        )
