#!/usr/bin/env python3
"""Time per optimiser step of one episode of S segments, truncated and full BPTT, beside the same
tokens as one segment (the miniature's cells, docs/results.md).

    python benchmarks/bptt_step_time.py [--tokens 4096] [--length 64] [--segments 8] [--reps 5]
        [--d-model 64] [--n-layer 2] [--d-state 64] [--headdim 16] [--vocab 1024] [--threads 1]

One Mamba-2 LM (torch backend, fp32, CPU), random tokens, each step `backward_episode` + clip +
AdamW step + zero_grad, as `training_step` does in episode mode:

- one segment:  [tokens/T, 1, T]       (S = 1: the miniature's forget_threshold_cpu cells)
- truncated S:  [tokens/(S*T), S, T]   (gradient horizon T, the state carried)
- full S:       [tokens/(S*T), S, T]   (gradient horizon S*T: S-1 extra segment forwards)

The three alternate, --reps times each, so that machine load affects them alike; the table gives
the fastest step's wall and CPU (process) time, tokens/s, and CPU time relative to one segment.
"""

from __future__ import annotations

import argparse
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=4096, help="tokens per optimiser step")
    ap.add_argument("--length", type=int, default=64, help="T: tokens per segment")
    ap.add_argument("--segments", type=int, default=8, help="S")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--d-model", type=int, default=64)
    ap.add_argument("--n-layer", type=int, default=2)
    ap.add_argument("--d-state", type=int, default=64)
    ap.add_argument("--headdim", type=int, default=16)
    ap.add_argument("--vocab", type=int, default=1024)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()

    import torch

    from stuffed_mamba.model import Mamba2Config, Mamba2LM
    from stuffed_mamba.training.bptt import backward_episode

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = Mamba2Config(
        d_model=args.d_model,
        n_layer=args.n_layer,
        d_state=args.d_state,
        headdim=args.headdim,
        vocab_size=args.vocab,
        chunk_size=64,
    )
    model = Mamba2LM(cfg, backend="torch")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    T, S = args.length, args.segments
    if args.tokens % (S * T):
        raise SystemExit(f"--tokens {args.tokens} is not a multiple of S x T = {S * T}")
    runs = {
        "one segment": (torch.randint(0, args.vocab, (args.tokens // T, 1, T + 1)), "truncated"),
        f"truncated S={S}": (torch.randint(0, args.vocab, (args.tokens // (S * T), S, T + 1)), "truncated"),
        f"full S={S}": (torch.randint(0, args.vocab, (args.tokens // (S * T), S, T + 1)), "full"),
    }

    def step(episode, mode):
        backward_episode(model, episode[..., :-1], episode[..., 1:], mode=mode)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    best = {name: (float("inf"), float("inf")) for name in runs}
    for rep in range(args.reps + 1):  # the first round warms up
        for name, (episode, mode) in runs.items():
            w0, c0 = time.perf_counter(), time.process_time()
            step(episode, mode)
            w, c = time.perf_counter() - w0, time.process_time() - c0
            if rep:
                best[name] = (min(best[name][0], w), min(best[name][1], c))

    ref = best["one segment"][1]
    print(
        f"Mamba-2 d_model {args.d_model}, {args.n_layer} layers, d_state {args.d_state}; {args.tokens} tokens per "
        f"step, T = {T}; {args.threads} thread(s); fastest of {args.reps} steps"
    )
    print("| episode | B x S x T | wall s/step | CPU s/step | tokens/s (wall) | tokens/s (CPU) | CPU vs one segment |")
    print("|---|---|---|---|---|---|---|")
    for name, (episode, _) in runs.items():
        B, S_, T1 = episode.shape
        w, c = best[name]
        print(
            f"| {name} | {B} x {S_} x {T1 - 1} | {w:.3f} | {c:.3f} | {args.tokens / w:.0f} | {args.tokens / c:.0f} "
            f"| {c / ref:.2f}x |"
        )


if __name__ == "__main__":
    main()
