"""Training throughput on CPU: our torch backend vs. transformers' Mamba2ForCausalLM (pure-PyTorch path).

Same configuration and the same weights (copied through our HF export), forward + backward + AdamW step,
the two models alternating in one process so that machine load affects both alike.

    python benchmarks/train_throughput.py [--d-model 256 --n-layer 4 --d-state 64 --headdim 32 --chunk 256
                                           --seq-len 2048 --batch 2 --steps 5]
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch


def build(args):
    from transformers import Mamba2ForCausalLM

    from stuffed_mamba.model import Mamba2Config, Mamba2LM

    cfg = Mamba2Config(
        d_model=args.d_model,
        n_layer=args.n_layer,
        vocab_size=args.vocab,
        d_state=args.d_state,
        headdim=args.headdim,
        chunk_size=args.chunk,
    )
    torch.manual_seed(0)
    ours = Mamba2LM(cfg)
    with tempfile.TemporaryDirectory() as d:
        ours.save_pretrained(d, format="hf")
        theirs = Mamba2ForCausalLM.from_pretrained(d)
    return ours, theirs


def make_step(model, ids, labels, is_hf):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step():
        if is_hf:
            logits = model(ids).logits
            loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1))
        else:
            loss = model(ids, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.item()

    return step


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--d-model", type=int, default=256)
    p.add_argument("--n-layer", type=int, default=4)
    p.add_argument("--d-state", type=int, default=64)
    p.add_argument("--headdim", type=int, default=32)
    p.add_argument("--chunk", type=int, default=256)
    p.add_argument("--vocab", type=int, default=256)
    p.add_argument("--seq-len", type=int, default=2048)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    ours, theirs = build(args)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, args.vocab, (args.batch, args.seq_len), generator=g)
    labels = torch.randint(0, args.vocab, (args.batch, args.seq_len), generator=g)
    steps = {
        "stuffed_mamba (torch)": make_step(ours, ids, labels, False),
        "transformers Mamba2": make_step(theirs, ids, labels, True),
    }
    for fn in steps.values():  # warm-up: allocator, first-call overheads
        fn()
    times = {k: [] for k in steps}
    for _ in range(args.steps):
        for name, fn in steps.items():  # alternate, so load drifts hit both
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)

    tokens = args.batch * args.seq_len
    print(
        f"config: d_model={args.d_model} n_layer={args.n_layer} d_state={args.d_state} headdim={args.headdim} "
        f"chunk={args.chunk} T={args.seq_len} batch={args.batch} threads={torch.get_num_threads()} "
        f"steps={args.steps} (median)"
    )
    print(f"{'implementation':<24}{'s/step':>10}{'tokens/s':>12}")
    med = {}
    for name, ts in times.items():
        med[name] = sorted(ts)[len(ts) // 2]
        print(f"{name:<24}{med[name]:>10.3f}{tokens / med[name]:>12.0f}")
    a, b = med["transformers Mamba2"], med["stuffed_mamba (torch)"]
    print(f"ratio (ours / transformers tokens/s): {a / b:.2f}x")


if __name__ == "__main__":
    main()
