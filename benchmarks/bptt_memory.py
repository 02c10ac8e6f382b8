#!/usr/bin/env python3
"""Peak memory and time per episode of full BPTT (`optim.bptt: full`) vs one whole-sequence backward.

    python benchmarks/bptt_memory.py [--segments 1,4,12,24] [--length 512] [--batch 1]
        [--d-model 128] [--n-layer 2] [--d-state 64] [--headdim 32] [--vocab 256] [--threads 1]
        [--allocator jemalloc|libc]

One Mamba-2 LM (torch backend, fp32, CPU), one episode [B, S, T] of random tokens:

- full S:  `backward_episode(model, inputs, labels, mode="full")`: S-1 segment forwards without
  graphs, then S recomputations + backwards, last segment first. Its memory should not grow with S
  (one segment's graph + S boundary states of N_S floats per row).
- whole S: one forward + backward over the B x (S*T) tokens, the same gradient (the reference of
  the tests): its activations grow linearly in S*T.

Each (mode, S) runs in a fresh subprocess after a 16-token warm-up; its "working set" is the
child's peak resident set size (`ru_maxrss`) minus its resident set just before the episode, i.e.
what the episode itself made the machine provide. Ratios are against full S=1 of the same run.
The gradient norms of full and whole at the same S are compared (they are the same gradient).
The children run under the allocator `stuffed-mamba` itself uses (jemalloc, purging off, when
installed: see stuffed_mamba.allocator) unless `--allocator libc`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

from stuffed_mamba import allocator

CHILD = r"""
import json, resource, sys, time, torch
from stuffed_mamba.model import Mamba2Config, Mamba2LM
from stuffed_mamba.training.bptt import backward_episode
a = json.loads(sys.argv[1])
torch.set_num_threads(a["threads"])
torch.manual_seed(0)
model = Mamba2LM(Mamba2Config(d_model=a["d_model"], n_layer=a["n_layer"], d_state=a["d_state"],
                              headdim=a["headdim"], vocab_size=a["vocab"]))
B, S, T = a["batch"], a["segments"], a["length"]
ids = torch.randint(0, a["vocab"], (B, S * T + 1))
inputs, labels = ids[:, :-1].reshape(B, S, T), ids[:, 1:].reshape(B, S, T)
model(ids[:, :16], labels=ids[:, 1:17]).loss.backward()  # warm-up: lazy allocations, not the peak
model.zero_grad(set_to_none=True)
def rss_kb():
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("VmRSS:"))
before = rss_kb()
t0 = time.perf_counter()
if a["mode"] == "full":
    loss = float(backward_episode(model, inputs, labels, mode="full").mean())
else:
    out = model(inputs.reshape(B, S * T), labels=labels.reshape(B, S * T))
    out.loss.backward()
    loss = float(out.loss)
seconds = time.perf_counter() - t0
grad_norm = float(torch.sqrt(sum(p.grad.double().pow(2).sum() for p in model.parameters())))
print(json.dumps({"peak_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "before_kb": before,
                  "seconds": seconds, "loss": loss, "grad_norm": grad_norm}))
"""


def child_env(name: str) -> dict:
    env = dict(os.environ)
    lib = allocator.find_jemalloc() if name == "jemalloc" else None
    if name == "jemalloc" and lib is None:
        raise SystemExit("libjemalloc.so.2 not found (bash scripts/install.sh installs it); use --allocator libc")
    if lib is not None:
        env["LD_PRELOAD"] = lib
        env["MALLOC_CONF"] = allocator.MALLOC_CONF
    return env


def run(mode: str, segments: int, args) -> dict:
    spec = {k: v for k, v in vars(args).items() if k != "allocator"}
    spec.update(mode=mode, segments=segments)
    out = subprocess.run(
        [sys.executable, "-c", CHILD, json.dumps(spec)], capture_output=True, text=True, env=child_env(args.allocator)
    )
    if out.returncode != 0:
        last = (out.stderr.strip().splitlines() or ["killed (out of memory?)"])[-1]
        return {"error": f"exit {out.returncode}: {last}"}
    r = json.loads(out.stdout.strip().splitlines()[-1])
    r["set_mb"] = (r["peak_kb"] - r["before_kb"]) / 1024
    return r


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--segments", default="1,4,12,24", help="comma-separated S values")
    p.add_argument("--length", type=int, default=512, help="T, tokens per segment")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--d-model", type=int, default=128)
    p.add_argument("--n-layer", type=int, default=2)
    p.add_argument("--d-state", type=int, default=64)
    p.add_argument("--headdim", type=int, default=32)
    p.add_argument("--vocab", type=int, default=256)
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads in each child")
    p.add_argument(
        "--allocator", choices=("jemalloc", "libc"), default="jemalloc" if allocator.find_jemalloc() else "libc"
    )
    args = p.parse_args(argv)
    segments = [int(s) for s in args.segments.split(",")]
    del args.segments

    print(
        f"Mamba-2 d_model={args.d_model} n_layer={args.n_layer} d_state={args.d_state} headdim={args.headdim} "
        f"vocab={args.vocab}, torch backend, fp32, CPU, {args.threads} thread(s), {args.allocator}; episode B={args.batch} x S x "
        f"T={args.length}; working set = peak RSS - RSS before the episode, fresh process per row"
    )
    header = (
        f"{'S':>3} {'S*T':>7} {'full MB':>8} {'x S=1':>6} {'full s':>7} {'x S=1':>6} "
        f"{'whole MB':>9} {'x S=1':>6} {'whole s':>8} {'whole/full MB':>14} {'|grad| rel diff':>16}"
    )
    print(header)
    print("-" * len(header))
    base = None
    for S in segments:
        f, w = run("full", S, args), run("whole", S, args)
        if base is None and "error" not in f:
            base = f
        if "error" in f or "error" in w:
            print(f"{S:>3} {S * args.length:>7} " + "; ".join(r.get("error", "ok") for r in (f, w)))
            continue
        diff = abs(f["grad_norm"] - w["grad_norm"]) / w["grad_norm"]
        print(
            f"{S:>3} {S * args.length:>7} {f['set_mb']:>8.1f} {f['set_mb'] / base['set_mb']:>6.2f} "
            f"{f['seconds']:>7.2f} {f['seconds'] / base['seconds']:>6.1f} {w['set_mb']:>9.1f} "
            f"{w['set_mb'] / base['set_mb']:>6.2f} {w['seconds']:>8.2f} {w['set_mb'] / f['set_mb']:>14.1f} "
            f"{diff:>16.1e}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
