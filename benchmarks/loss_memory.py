#!/usr/bin/env python3
"""Peak memory of the LM loss at growing T: our chunked cross-entropy vs. naive full logits (CPU).

    python benchmarks/loss_memory.py [--lengths 1024,4096,16384] [--naive-max 8192]
        [--vocab 50277] [--d-model 768] [--chunk-tokens 4096]

The loss alone, forward + backward, batch 1, fp32: hidden [1, T, d] and the tied LM head weight
[V, d] (both requiring grad) -> mean cross-entropy against random labels.

- chunked: `stuffed_mamba.model.loss.chunked_cross_entropy` (what `model(ids, labels=...)` runs):
  one chunk of logits at a time, recomputed in backward, so its memory should stay flat in T.
- naive: `F.cross_entropy(hidden @ W.T, labels)`, the [T, V] logits and their gradient in memory.

Each (loss, T) runs in a fresh subprocess; its peak is the child's max resident set size
(`ru_maxrss`, what the machine really had to provide), and "loss working set" is that peak minus
the RSS measured once the inputs exist. The reference is the naive loss at the same T in the same
run. Naive runs above --naive-max are skipped (their logits alone need T * V * 4 bytes, twice).
The two losses' values are compared at each T where both ran.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

CHILD = r"""
import json, resource, sys, torch
import torch.nn.functional as F
from stuffed_mamba.model.loss import chunked_cross_entropy
mode, T, V, d, chunk = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
torch.manual_seed(0)
hidden = torch.randn(1, T, d, requires_grad=True)
weight = (0.02 * torch.randn(V, d)).requires_grad_()
labels = torch.randint(0, V, (1, T))
def rss_kb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
before = rss_kb()
if mode == "chunked":
    loss = chunked_cross_entropy(hidden, weight, labels, chunk_tokens=chunk)
else:
    loss = F.cross_entropy(F.linear(hidden, weight).view(T, V), labels.view(T))
loss.backward()
print(json.dumps({"peak_kb": rss_kb(), "before_kb": before, "loss": loss.item(),
                  "grad_norm": weight.grad.norm().item()}))
"""


def run(mode: str, T: int, args) -> dict:
    cmd = [sys.executable, "-c", CHILD, mode, str(T), str(args.vocab), str(args.d_model), str(args.chunk_tokens)]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        last = (out.stderr.strip().splitlines() or ["killed (out of memory?)"])[-1]
        return {"error": f"exit {out.returncode}: {last}"}
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lengths", default="1024,4096,16384", help="comma-separated T values")
    p.add_argument("--naive-max", type=int, default=8192, help="largest T for the naive loss")
    p.add_argument("--vocab", type=int, default=50277, help="V (50277: the official checkpoints' vocabulary)")
    p.add_argument("--d-model", type=int, default=768)
    p.add_argument("--chunk-tokens", type=int, default=4096, help="tokens per chunk of the chunked loss")
    args = p.parse_args(argv)
    lengths = [int(t) for t in args.lengths.split(",")]
    gb = 1024**2  # ru_maxrss is in KiB on Linux: KiB / 1024**2 = GiB

    print(
        f"loss forward+backward, batch 1, fp32, V={args.vocab}, d_model={args.d_model}, "
        f"chunk={args.chunk_tokens} tokens; peak RSS per fresh process (GiB)"
    )
    header = (
        f"{'T':>7} {'logits [T,V]':>13} {'chunked peak':>13} {'chunked set':>12} "
        f"{'naive peak':>11} {'naive set':>10} {'naive/chunked set':>18} {'|loss diff|':>12}"
    )
    print(header)
    print("-" * len(header))
    for T in lengths:
        c = run("chunked", T, args)
        n = run("naive", T, args) if args.naive_max >= T else {"error": "skipped"}
        logits_gb = T * args.vocab * 4 / 1024**3

        def cols(r):
            if "error" in r:
                return f"{'-':>11}", f"{'-':>10}", None
            s = (r["peak_kb"] - r["before_kb"]) / gb
            return f"{r['peak_kb'] / gb:>11.2f}", f"{s:>10.2f}", s

        cp, cs, cset = cols(c)
        np_, ns, nset = cols(n)
        ratio = f"{nset / cset:>18.1f}" if cset and nset else f"{'-':>18}"
        diff = f"{abs(c['loss'] - n['loss']):>12.1e}" if "error" not in c and "error" not in n else f"{'-':>12}"
        print(f"{T:>7} {logits_gb:>13.2f} {cp:>13} {cs:>12} {np_:>11} {ns:>10} {ratio} {diff}")
        for name, r in (("chunked", c), ("naive", n)):
            if "error" in r and r["error"] != "skipped":
                print(f"        {name}: {r['error']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
