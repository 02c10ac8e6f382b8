"""The doctor's `collective` check: a process group all-reduces (NCCL on CUDA, gloo on CPU)."""

from __future__ import annotations

from stuffed_mamba.errors import first_line
from stuffed_mamba.training.doctor.context import Context, Fail


def check_collective(ctx: Context) -> str:
    ctx.need("recipe")
    import torch.multiprocessing as mp

    backend = "nccl" if ctx.cuda else "gloo"
    world = min(2, ctx.cuda) if ctx.cuda else 2
    port = _free_port()
    errors = mp.get_context("spawn").SimpleQueue()
    try:
        mp.start_processes(
            _all_reduce, args=(world, backend, port, errors), nprocs=world, join=True, start_method="spawn"
        )
    except Exception as e:  # noqa: BLE001 - a rank's error arrives as ProcessRaisedException
        reason = errors.get() if not errors.empty() else first_line(e)
        raise Fail(f"{backend}, {world} rank(s): {reason}") from None
    return f"{backend}: {world} rank(s) all-reduced"


def _all_reduce(rank: int, world: int, backend: str, port: int, errors) -> None:
    import datetime

    import torch
    import torch.distributed as dist

    try:
        dist.init_process_group(
            backend,
            init_method=f"tcp://127.0.0.1:{port}",
            rank=rank,
            world_size=world,
            timeout=datetime.timedelta(seconds=60),
        )
        device = torch.device("cuda", rank) if backend == "nccl" else torch.device("cpu")
        x = torch.full((4,), float(rank + 1), device=device)
        dist.all_reduce(x)
        expected = world * (world + 1) / 2
        if not torch.allclose(x.cpu(), torch.full((4,), expected)):
            raise RuntimeError(f"all_reduce gave {x.tolist()}, expected {expected}")
        dist.destroy_process_group()
    except Exception as e:
        errors.put(first_line(e))
        raise


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
