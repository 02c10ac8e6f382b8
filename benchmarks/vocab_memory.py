"""Peak memory of forward + backward with the official vocabulary vs. a 256-token one.

With the chunked cross-entropy (`labels=`), a [B, T, V] logits tensor never exists, so the
50277-token vocabulary should cost only the embedding, its gradient and one chunk's logits more
than a 256-token vocabulary. fp32 logits and their gradient at T = 32768 would alone add
2 * 32768 * 50288 * 4 bytes = 13.2 GB.

Each configuration runs in a fresh subprocess; peak = the child's max resident set size
(ru_maxrss), which is what the machine really had to provide.

    python benchmarks/vocab_memory.py [--seq-len 32768 --d-model 768 --n-layer 1]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

CHILD = r"""
import json, resource, sys, torch
from stuffed_mamba.model import Mamba2Config, Mamba2LM
vocab, T, d, L, mode = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
torch.manual_seed(0)
m = Mamba2LM(Mamba2Config(d_model=d, n_layer=L, vocab_size=vocab))
ids = torch.randint(0, vocab, (1, T)); labels = torch.randint(0, vocab, (1, T))
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
if mode == "chunked":
    loss = m(ids, labels=labels).loss
else:  # full logits, the naive way
    logits = m(ids).logits
    loss = torch.nn.functional.cross_entropy(logits.view(-1, logits.shape[-1]).float(), labels.view(-1))
loss.backward()
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"peak_kb": peak, "after_init_kb": base, "loss": loss.item()}))
"""


def run(vocab, args, mode):
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(vocab), str(args.seq_len), str(args.d_model), str(args.n_layer), mode],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seq-len", type=int, default=32768)
    p.add_argument("--d-model", type=int, default=768)
    p.add_argument("--n-layer", type=int, default=1)
    p.add_argument("--naive", action="store_true", help="also run the full-logits loss with V=50277 (needs >13 GB)")
    args = p.parse_args()
    rows = [("chunked", 256), ("chunked", 50277)] + ([("full logits", 50277)] if args.naive else [])
    res = {}
    print(f"T={args.seq_len} d_model={args.d_model} n_layer={args.n_layer}, forward+backward, batch 1, fp32")
    print(f"{'loss':<14}{'vocab':>8}{'peak RSS GB':>14}")
    for mode, vocab in rows:
        r = run(vocab, args, "chunked" if mode == "chunked" else "full")
        res[(mode, vocab)] = r["peak_kb"] / 2**20
        print(f"{mode:<14}{vocab:>8}{res[(mode, vocab)]:>14.2f}")
    extra = res[("chunked", 50277)] - res[("chunked", 256)]
    print(f"extra peak memory of the 50277-token vocabulary with the chunked loss: {extra:.2f} GB")
    print(f"(full fp32 logits + their gradient would add {2 * args.seq_len * 50288 * 4 / 1e9:.1f} GB)")


if __name__ == "__main__":
    main()
