"""Passkey prefill memory does not grow with the context: peak at 1M tokens vs 64K (issue 5, acceptance 4).

    python benchmarks/passkey_memory.py                       # 64K and 1M, tiny model, CPU
    python benchmarks/passkey_memory.py --lengths 64K,256K,1M --prefill-chunk 4096

For each length it builds the appendix-B.1 prompt (byte tokenizer: one token per
character), then runs `greedy_continuation` (chunked prefill carrying the state, then
`model.step`) and prints the peak of live tensor memory created during the call (see
`stuffed_mamba.probes.memory.TensorPeak`; on CUDA also `torch.cuda.max_memory_allocated`),
the process RSS high-water mark above its level before the call (allocator-dependent, for
reference), time, and the ratio of each peak to the first (reference) length's. The
acceptance target is ratio <= 1.2 at 1M vs 64K. `--contrast` adds one whole-prompt
forward without chunking at the reference length, to show what the chunking saves.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def parse_length(t: str) -> int:
    t = t.strip().upper()
    mult = {"K": 1 << 10, "M": 1 << 20}.get(t[-1:], 1)
    return int(float(t[:-1] if mult > 1 else t) * mult)


def rss_hwm_reset() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM (Linux >= 4.0)
        return True
    except OSError:
        return False


def proc_status(key: str) -> int:
    m = re.search(rf"{key}:\s+(\d+) kB", Path("/proc/self/status").read_text())
    return int(m.group(1)) * 1024 if m else 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lengths", default="64K,1M")
    ap.add_argument("--prefill-chunk", type=int, default=4096)
    ap.add_argument("--d-model", type=int, default=64)
    ap.add_argument("--n-layer", type=int, default=2)
    ap.add_argument("--chunk-size", type=int, default=64, help="the model's SSD block (CPU is fastest at 64)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--contrast", action="store_true", help="also one unchunked forward at the first length")
    args = ap.parse_args()

    from stuffed_mamba.data import load_tokenizer

    from stuffed_mamba.model import Mamba2Config, Mamba2LM
    from stuffed_mamba.probes.memory import TensorPeak
    from stuffed_mamba.probes.passkey import build_prompt, greedy_continuation

    torch.manual_seed(0)
    tok = load_tokenizer("bytes")
    cfg = Mamba2Config(
        d_model=args.d_model,
        n_layer=args.n_layer,
        vocab_size=tok.vocab_size,
        d_state=16,
        headdim=16,
        chunk_size=args.chunk_size,
    )
    model = Mamba2LM(cfg).to(args.device).eval()
    cuda = args.device.startswith("cuda")
    lengths = [parse_length(x) for x in args.lengths.split(",")]
    print(
        f"model: d_model={cfg.d_model} n_layer={cfg.n_layer} N_S={cfg.state_size:,} floats; "
        f"prefill chunk {args.prefill_chunk}; device {args.device}"
    )
    greedy_continuation(model, build_prompt(tok, 4096, 0.5, "12345"), max_new_tokens=2)  # warm-up

    rows = []
    for T in lengths:
        ids = torch.tensor(build_prompt(tok, T, 0.5, "12345"), device=args.device)
        have_hwm = rss_hwm_reset()
        rss0 = proc_status("VmRSS")
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        t0 = time.perf_counter()
        with TensorPeak() as peak:
            greedy_continuation(model, ids, max_new_tokens=8, prefill_chunk=args.prefill_chunk)
        secs = time.perf_counter() - t0
        row = {
            "T": T,
            "tensor_peak": peak.peak_bytes,
            "secs": secs,
            "rss": proc_status("VmHWM") - rss0 if have_hwm else None,
            "cuda": torch.cuda.max_memory_allocated() - base if cuda else None,
        }
        rows.append(row)
        print(f"  {T:>9,} tokens done in {secs:.1f} s", flush=True)

    if args.contrast:
        T = lengths[0]
        ids = torch.tensor(build_prompt(tok, T, 0.5, "12345"), device=args.device)[None]
        with torch.no_grad(), TensorPeak() as peak:
            model(ids[:, :-1])
        print(
            f"contrast: one unchunked forward over {T:,} tokens peaks at {peak.peak_bytes / 2**20:.1f} MiB "
            f"({peak.peak_bytes / rows[0]['tensor_peak']:.1f}x the chunked prefill)"
        )

    ref = rows[0]
    mib = lambda b: "-" if b is None else f"{b / 2**20:.2f}"  # noqa: E731
    print(
        f"\n{'tokens':>10}  {'tensor peak MiB':>15}  {'ratio':>6}  {'RSS HWM+ MiB':>12}  "
        f"{'cuda peak MiB':>13}  {'seconds':>8}  {'tokens/s':>9}"
    )
    for r in rows:
        ratio = r["tensor_peak"] / ref["tensor_peak"]
        print(
            f"{r['T']:>10,}  {mib(r['tensor_peak']):>15}  {ratio:>6.3f}  {mib(r['rss']):>12}  "
            f"{mib(r['cuda']):>13}  {r['secs']:>8.1f}  {r['T'] / r['secs']:>9,.0f}"
        )
    worst = max(r["tensor_peak"] for r in rows) / ref["tensor_peak"]
    print(
        f"\nlargest peak / peak at {ref['T']:,} tokens = {worst:.3f} (target <= 1.2): {'OK' if worst <= 1.2 else 'FAIL'}"
    )
    return 0 if worst <= 1.2 else 1


if __name__ == "__main__":
    sys.exit(main())
