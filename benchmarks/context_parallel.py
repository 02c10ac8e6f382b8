#!/usr/bin/env python3
"""Context parallelism on the CPU: peak memory per rank, tokens/s and bytes sent per layer, at a fixed T.

    python benchmarks/context_parallel.py [--length 8192] [--ranks 1,2,4] [--reps 3] [--batch 1]
        [--d-model 128] [--n-layer 2] [--d-state 32] [--headdim 32] [--vocab 256] [--threads 1]
        [--checkpointing]

For each N, N fresh processes (gloo) hold T/N tokens each of one [batch, T] sequence and run forward +
backward of the mean loss under `ops.context_parallel.split_over` (N = 1: the plain backend), --reps
times. Per rank: the working set (peak resident set `ru_maxrss` minus the resident set before the first
timed step: what the step made the machine provide), the fastest step's wall time, and the bytes the
rank hands to collectives per layer and step, counted by wrapping `torch.distributed.all_gather` /
`all_reduce` (forward: the fp32 summary all-gather and the conv-halo all-gather; backward under gloo:
an all-reduce of the gathered gradient; NCCL's reduce-scatter would move 1/N of it). Bytes on the wire
of a ring algorithm are (N-1)/N x the gathered size for an all-gather, 2 (N-1)/N x the size for an
all-reduce; the table gives the payload and the ring's bytes.

tokens/s = batch x T / the slowest rank's fastest step. On a 2-core machine N > 2 ranks share the cores,
so tokens/s here says nothing about scaling; the memory per rank does (activations ~ T/N).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import tempfile
import time
from pathlib import Path


def _rank(rank: int, n: int, a: dict, out_dir: str) -> None:
    import torch
    import torch.distributed as dist

    from stuffed_mamba.model import Mamba2Config, Mamba2LM
    from stuffed_mamba.ops import context_parallel as cp

    torch.set_num_threads(a["threads"])
    group = None
    sent = {"all_gather": 0, "all_reduce": 0}
    if n > 1:
        dist.init_process_group("gloo", init_method=f"file://{out_dir}/init", rank=rank, world_size=n)
        group = dist.group.WORLD
        gather, reduce = dist.all_gather, dist.all_reduce

        def counting_gather(parts, x, **kw):
            sent["all_gather"] += x.numel() * x.element_size()
            return gather(parts, x, **kw)

        def counting_reduce(x, **kw):
            sent["all_reduce"] += x.numel() * x.element_size()
            return reduce(x, **kw)

        dist.all_gather, dist.all_reduce = counting_gather, counting_reduce
    cp.install(n > 1)
    torch.manual_seed(0)
    config = Mamba2Config(
        d_model=a["d_model"], n_layer=a["n_layer"], d_state=a["d_state"], headdim=a["headdim"], vocab_size=a["vocab"]
    )
    model = Mamba2LM(config, backend="torch")
    model.gradient_checkpointing = a["checkpointing"]
    T = a["length"]
    ids = torch.randint(0, a["vocab"], (a["batch"], T + 1), generator=torch.Generator().manual_seed(1))
    sl = cp.piece(T, rank, n)
    inputs, labels = ids[:, :-1][:, sl], ids[:, 1:][:, sl]

    def step():
        with cp.split_over(group):
            (model(inputs, labels=labels).loss / n).backward()
        model.zero_grad(set_to_none=True)

    with cp.split_over(group):  # warm-up on a few tokens: lazy allocations are not the step's
        (model(inputs[:, :16], labels=labels[:, :16]).loss * 0).backward()
    model.zero_grad(set_to_none=True)
    sent = dict.fromkeys(sent, 0)
    before = _rss_kb()
    times = []
    for _ in range(a["reps"]):
        if group is not None:
            dist.barrier()
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    per_layer = {k: v / a["reps"] / config.n_layer for k, v in sent.items()}
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump({"set_mb": (peak - before) / 1024, "seconds": min(times), "bytes": per_layer}, f)
    if group is not None:
        dist.destroy_process_group()


def _rss_kb() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--length", type=int, default=8192, help="T: tokens per sequence (fixed over N)")
    ap.add_argument("--ranks", default="1,2,4", help="N values")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--d-model", type=int, default=128)
    ap.add_argument("--n-layer", type=int, default=2)
    ap.add_argument("--d-state", type=int, default=32)
    ap.add_argument("--headdim", type=int, default=32)
    ap.add_argument("--vocab", type=int, default=256)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--checkpointing", action="store_true", help="activation checkpointing per layer")
    args = ap.parse_args()
    import torch.multiprocessing as mp

    a = {k: getattr(args, k) for k in vars(args) if k != "ranks"}
    print(
        f"T={args.length} batch={args.batch} d_model={args.d_model} n_layer={args.n_layer} d_state={args.d_state} "
        f"headdim={args.headdim} checkpointing={args.checkpointing}; per rank: working set (peak RSS - RSS "
        "before), fastest step; bytes per layer and step handed to collectives (ring bytes on the wire)"
    )
    print(
        "| N | tokens/rank | working set / rank (MiB) | vs N=1 | step (s) | tokens/s | all-gather B | all-reduce B | ring B |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    base = None
    for n in [int(x) for x in args.ranks.split(",")]:
        with tempfile.TemporaryDirectory() as out:
            mp.spawn(_rank, args=(n, a, out), nprocs=n)
            rows = [json.loads(Path(out, f"rank{r}.json").read_text()) for r in range(n)]
        mb = max(r["set_mb"] for r in rows)
        base = base or mb
        seconds = max(r["seconds"] for r in rows)
        g, rd = rows[0]["bytes"]["all_gather"], rows[0]["bytes"]["all_reduce"]
        ring = (n - 1) * g + 2 * (n - 1) / n * rd  # all-gather: (N-1) pieces of g; all-reduce: 2(N-1)/N x rd
        print(
            f"| {n} | {args.length // n} | {mb:.1f} | {mb / base:.2f} | {seconds:.3f} | "
            f"{args.batch * args.length / seconds:.0f} | {g:.0f} | {rd:.0f} | {ring:.0f} |"
        )


if __name__ == "__main__":
    main()
