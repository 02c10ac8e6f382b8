"""`trainer.context_parallel: N` in training: the groups, the data ranks and each rank's piece of a segment.

With W ranks, ranks n*N .. n*N + N-1 form context-parallel group n: they read the same rows (the data
pipeline sees rank // N of W // N) and rank n*N + i holds tokens [i*T/N, (i+1)*T/N) of every segment.
The ops split over the group (`ops.context_parallel`, installed before the model is built). Each rank's
loss is the mean over its T/N tokens; DDP and DeepSpeed average the gradients over all W ranks, so the
step follows (1/W) sum_r loss_r = (1/(W/N)) sum_groups (mean of the group's N piece means), the mean over
the W/N rows' tokens when every piece holds T/N of them: the objective of W/N ranks without context
parallelism, each token counted once.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from stuffed_mamba.ops import context_parallel as ops_cp

_GROUPS: dict[int, dist.ProcessGroup | None] = {}


def install(n: int) -> None:
    """Before the model is built: its ops become the context-parallel wrappers when n > 1."""
    ops_cp.install(n > 1)


def group(n: int) -> dist.ProcessGroup | None:
    """This rank's group of n consecutive ranks (None when n == 1 or not distributed). Every rank creates
    every group, in the same order, at its first call (all ranks make it at the same training step)."""
    if n == 1 or not (dist.is_available() and dist.is_initialized()):
        return None
    if n not in _GROUPS:
        world, rank = dist.get_world_size(), dist.get_rank()
        if world % n:
            raise ValueError(f"trainer.context_parallel={n} must divide the world size {world}")
        mine = None
        for first in range(0, world, n):
            g = dist.new_group(list(range(first, first + n)))
            if first <= rank < first + n:
                mine = g
        _GROUPS[n] = mine
    return _GROUPS[n]


def data_rank(rank: int, world_size: int, n: int) -> tuple[int, int]:
    """(rank, world size) of the data pipeline: the ranks of one group read the same rows."""
    return rank // n, world_size // n


def pieces(group: dist.ProcessGroup | None, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Each [..., T] tensor's positions held by this rank of `group` (all of them without a group)."""
    if group is None:
        return tensors
    sl = ops_cp.piece(tensors[0].shape[-1], dist.get_rank(group), dist.get_world_size(group))
    return tuple(t[..., sl] for t in tensors)


def group_mean(losses: torch.Tensor, group: dist.ProcessGroup | None) -> torch.Tensor:
    """The mean over the group's pieces of each segment's loss [S]: the loss of the whole segment."""
    if group is None:
        return losses
    out = losses.clone()
    dist.all_reduce(out, group=group)
    return out / dist.get_world_size(group)


def split_over(group: dist.ProcessGroup | None):
    """Inside: the model's ops split over `group` (forward, backward and checkpoint recomputation)."""
    return ops_cp.split_over(group)
