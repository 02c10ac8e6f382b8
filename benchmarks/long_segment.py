"""Long segments on CPU: tokens/s and peak memory of one forward + backward, 2K to 64K tokens.

The 130M model's width (d_model 768, d_state 128, headdim 64, vocabulary 50277) with 4 layers, fp32,
the torch backend, activation checkpointing, the loss from labels (chunked cross-entropy), batch 1.
Each (length, allocator) runs in its own process, since peak RSS is per process: under jemalloc with
purging off (`MALLOC_CONF=dirty_decay_ms:-1,muzzy_decay_ms:-1`, how `stuffed-mamba` runs) and under
the C library's malloc. `--recipe-row` adds the 130M recipe's real segment: all 24 layers at its
`data.train_length` (32K) and 1 row. Ratios are against the 2K row of the same allocator.

    python benchmarks/long_segment.py [--lengths 2048 8192 32768 65536] [--layers 4]
                                      [--allocators jemalloc glibc] [--recipe-row] [--threads 2]

On a shared machine the load moves between rows. `--rounds N` measures the lengths interleaved
(2K, 16K, 2K, 16K, ...) and adds a table of each length's tokens/s against the 2K row of the same
round, with the spread over rounds; `--malloc-conf` runs jemalloc with another MALLOC_CONF.

    python benchmarks/long_segment.py --lengths 2048 16384 --allocators jemalloc --threads 1 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "mamba2_130m_256k.yaml"


def child(T: int, n_layer: int, threads: int) -> dict:
    """One process, one length: a short warm-up, then forward + backward over T tokens (>= 8K tokens in all)."""
    import torch

    from stuffed_mamba.model import Mamba2Config, Mamba2LM

    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = Mamba2LM(Mamba2Config(n_layer=n_layer), backend="torch").train()  # the 130M model's width
    model.gradient_checkpointing = True
    V = model.config.vocab_size

    def step(t):
        ids = torch.randint(0, V, (1, t + 1))
        model(ids[:, :-1], labels=ids[:, 1:]).loss.backward()

    step(256)  # first-call costs (thread pool, allocator) out of the measurement
    steps = max(1, 8192 // T)
    r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    for _ in range(steps):
        step(T)
    wall = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "T": T,
        "layers": n_layer,
        "steps": steps,
        "wall": wall / steps,
        "tok_s": steps * T / wall,
        "user": (r1.ru_utime - r0.ru_utime) / steps,
        "sys": (r1.ru_stime - r0.ru_stime) / steps,
        "minflt": (r1.ru_minflt - r0.ru_minflt) / steps,
        "rss_gb": r1.ru_maxrss / 2**20,
    }


def run(T: int, n_layer: int, allocator: str, threads: int, malloc_conf: str | None = None) -> dict | None:
    from stuffed_mamba.allocator import MALLOC_CONF, find_jemalloc

    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "MALLOC_CONF")}
    if allocator == "jemalloc":
        lib = find_jemalloc()
        if lib is None:
            print(
                "jemalloc: libjemalloc.so.2 not found (bash scripts/install.sh installs it); rows skipped",
                file=sys.stderr,
            )
            return None
        env.update(LD_PRELOAD=lib, MALLOC_CONF=malloc_conf or MALLOC_CONF)
    cmd = [sys.executable, __file__, "--child", str(T), str(n_layer), str(threads)]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if p.returncode:
        print(f"T={T} {allocator}: exit {p.returncode} {p.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
        return None
    row = json.loads(p.stdout.strip().splitlines()[-1])
    row["allocator"] = allocator if allocator == "glibc" or not malloc_conf else f"jemalloc({malloc_conf})"
    print(json.dumps(row), file=sys.stderr, flush=True)  # progress: rows take minutes at 32K
    return row


def table(rows: list[dict]) -> str:
    """Wall-clock rates follow the machine's load; CPU seconds (user + system) per token compare runs on a
    shared machine, and system time is where page faults show."""
    out = [
        "| T | layers | allocator | wall s | tokens/s | user s | system s | tokens per CPU-s | CPU per token vs 2K | "
        "minor faults | peak RSS GiB | RSS above 2K, MiB per 1K tokens |",
        "|" + "---|" * 12,
    ]
    ref = {(r["allocator"], r["layers"]): r for r in rows if r["T"] == 2048}
    for r in rows:
        base = ref.get((r["allocator"], r["layers"]))
        per_cpu = r["T"] / (r["user"] + r["sys"])
        slow = f"{base['T'] / (base['user'] + base['sys']) / per_cpu:.2f}" if base else "-"
        per_k = (
            f"{(r['rss_gb'] - base['rss_gb']) * 1024 / ((r['T'] - 2048) / 1024):.0f}" if base and r["T"] > 2048 else "-"
        )
        out.append(
            f"| {r['T']:,} | {r['layers']} | {r['allocator']} | {r['wall']:.0f} | {r['tok_s']:.0f} | "
            f"{r['user']:.0f} | {r['sys']:.0f} | {per_cpu:.0f} | {slow} | {r['minflt'] / 1e6:.1f}M | "
            f"{r['rss_gb']:.2f} | {per_k} |"
        )
    return "\n".join(out)


def rounds_table(rows: list[dict]) -> str:
    """Tokens/s of each length against the 2K row measured just before it (same allocator, same round):
    the load of the machine moves less within a round than across the whole run."""
    out = [
        "| T | layers | allocator | rounds | tokens/s vs 2K of its round: each | median | min - max |",
        "|" + "---|" * 7,
    ]
    groups: dict[tuple, list[float]] = {}
    for r in rows:
        if r["T"] == 2048:
            continue
        ref = [
            b
            for b in rows
            if b["T"] == 2048 and (b["allocator"], b["layers"], b["round"]) == (r["allocator"], r["layers"], r["round"])
        ]
        if ref:
            groups.setdefault((r["T"], r["layers"], r["allocator"]), []).append(r["tok_s"] / ref[0]["tok_s"])
    for (T, layers, allocator), ratios in groups.items():
        each = ", ".join(f"{x:.2f}" for x in ratios)
        out.append(
            f"| {T:,} | {layers} | {allocator} | {len(ratios)} | {each} | {statistics.median(ratios):.2f} | "
            f"{min(ratios):.2f} - {max(ratios):.2f} |"
        )
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lengths", type=int, nargs="+", default=[2048, 8192, 32768, 65536])
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--allocators", nargs="+", choices=["jemalloc", "glibc"], default=["jemalloc", "glibc"])
    p.add_argument("--recipe-row", action="store_true", help="add the 130M recipe's segment (24 layers, jemalloc)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--rounds", type=int, default=1, help="measure the lengths interleaved this many times")
    p.add_argument("--malloc-conf", help="jemalloc's MALLOC_CONF (default: the one stuffed-mamba sets)")
    p.add_argument("--table", metavar="JSONL", help="only print the table of rows saved earlier (one JSON per line)")
    p.add_argument("--child", nargs=3, type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(child(*args.child)))
        return 0
    if args.table:
        rows = [json.loads(line) for line in Path(args.table).read_text().splitlines() if line.startswith("{")]
        print(table(rows))
        if any(r.get("round", 0) for r in rows):
            print("\n" + rounds_table(rows))
        return 0

    rows = []
    for allocator in args.allocators:
        for i in range(args.rounds):
            for T in sorted(set(args.lengths) | {2048}):
                row = run(T, args.layers, allocator, args.threads, args.malloc_conf)
                rows += [{**row, "round": i}] if row else []
    if args.recipe_row:
        from stuffed_mamba.training.config import load_recipe

        T = load_recipe(RECIPE).data.train_length
        row = run(T, 24, args.allocators[0], args.threads)
        rows += [row] if row else []
    print(table(rows))
    if args.rounds > 1:
        print("\n" + rounds_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
