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

`--command` measures what a user gets instead (issue 19, acceptance 4): each length is one
`stuffed-mamba eval passkey` process (the console command, so the default start-up: jemalloc
with the project's MALLOC_CONF when installed) on a random checkpoint of recipes/tiny_cpu.yaml's
shape with its tokenizer, one sample; the table has each process's peak RSS (wait4's ru_maxrss:
tokenization, prefill and decode, Python and torch included) and its ratio to the first length's.
`--env KEY=VALUE` (repeatable) changes the child's environment, e.g. `STUFFED_MAMBA_JEMALLOC=0`
(glibc) or `MALLOC_CONF=dirty_decay_ms:10000`. Target: ratio <= 1.2 at 256K vs 16K.

    python benchmarks/passkey_memory.py --command                  # 16K and 256K: ~4 CPU-minutes
    python benchmarks/passkey_memory.py --command --env STUFFED_MAMBA_JEMALLOC=0
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


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


def tiny_checkpoint(folder: Path) -> None:
    """A random checkpoint folder of recipes/tiny_cpu.yaml's model with its tokenizer (memory and time
    do not depend on the weights)."""
    from stuffed_mamba.data import load_tokenizer

    from stuffed_mamba.model import Mamba2Config, Mamba2LM
    from stuffed_mamba.training.config import load_recipe

    recipe = load_recipe(ROOT / "recipes" / "tiny_cpu.yaml")
    tokenizer = ROOT / recipe.data.tokenizer
    shape = {k: getattr(recipe.model, k) for k in ("d_model", "n_layer", "d_state", "headdim", "chunk_size")}
    torch.manual_seed(0)
    model = Mamba2LM(Mamba2Config(**shape, vocab_size=load_tokenizer(str(tokenizer)).vocab_size))
    model.save_pretrained(folder, format="mamba_ssm")
    shutil.copy(tokenizer, folder / "tokenizer.json")


def console_command() -> list[str]:
    script = Path(sys.executable).parent / "stuffed-mamba"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "stuffed_mamba"]


def start_command(T: int, checkpoint: Path, out: Path, prefill_chunk: int, env: dict):
    """Start one `stuffed-mamba eval passkey` at T tokens in a fresh process."""
    cmd = [*console_command(), "eval", "passkey", "--checkpoint", str(checkpoint), "--lengths", str(T)]
    cmd += ["--samples", "1", "--prefill-chunk", str(prefill_chunk), "--device", "cpu", "--no-progress"]
    cmd += ["--out", str(out / f"eval_{T}")]
    log = out / f"eval_{T}.log"
    with open(log, "w") as f:
        return T, subprocess.Popen(cmd, env=env, stdout=f, stderr=subprocess.STDOUT), time.perf_counter(), log


def finish_command(T: int, p: subprocess.Popen, t0: float, log: Path) -> dict:
    """Wait for it: its peak RSS, wall and CPU time."""
    _, status, usage = os.wait4(p.pid, 0)  # the rusage of this child alone (re-executed in place)
    p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode:
        raise SystemExit(f"T={T}: exit {p.returncode}: {log.read_text().strip().splitlines()[-1:]}")
    secs = time.perf_counter() - t0
    print(f"  {T:>9,} tokens done in {secs:.0f} s, peak RSS {usage.ru_maxrss / 1024:.0f} MiB", flush=True)
    return {"T": T, "rss": usage.ru_maxrss * 1024, "secs": secs, "cpu": usage.ru_utime + usage.ru_stime}


def command_main(args, lengths: list[int]) -> int:
    from stuffed_mamba.allocator import MALLOC_CONF, OFF_VAR, find_jemalloc

    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "MALLOC_CONF", OFF_VAR)}
    env.pop("_STUFFED_MAMBA_REEXECUTED", None)
    for kv in args.env:
        key, _, value = kv.partition("=")
        env[key] = value
    if env.get(OFF_VAR) == "0" or find_jemalloc() is None:
        allocator = "the C library's malloc"
    else:
        allocator = f"jemalloc, MALLOC_CONF={env.get('MALLOC_CONF', MALLOC_CONF)}"
    print(f"`stuffed-mamba eval passkey`, tiny_cpu's shape, 1 sample, prefill chunk {args.prefill_chunk}; {allocator}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        tiny_checkpoint(out / "tiny")
        started = []
        for T in lengths:  # peak RSS is per process: --parallel only saves wall time
            started.append(start_command(T, out / "tiny", out, args.prefill_chunk, env))
            if not args.parallel:
                rows.append(finish_command(*started.pop()))
        rows += [finish_command(*job) for job in started]
    ref = rows[0]
    print(f"\n{'tokens':>10}  {'peak RSS MiB':>12}  {'ratio':>6}  {'seconds':>8}  {'CPU s':>7}")
    for r in rows:
        print(
            f"{r['T']:>10,}  {r['rss'] / 2**20:>12.0f}  {r['rss'] / ref['rss']:>6.3f}  {r['secs']:>8.0f}  {r['cpu']:>7.0f}"
        )
    worst = max(r["rss"] for r in rows) / ref["rss"]
    verdict = "OK" if worst <= 1.2 else "FAIL"
    print(f"\nlargest peak RSS / peak RSS at {ref['T']:,} tokens = {worst:.3f} (target <= 1.2): {verdict}")
    return 0 if worst <= 1.2 else 1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lengths", default=None, help="default 64K,1M; with --command 16K,256K")
    ap.add_argument("--prefill-chunk", type=int, default=4096)
    ap.add_argument("--d-model", type=int, default=64)
    ap.add_argument("--n-layer", type=int, default=2)
    ap.add_argument("--chunk-size", type=int, default=64, help="the model's SSD block (CPU is fastest at 64)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--contrast", action="store_true", help="also one unchunked forward at the first length")
    ap.add_argument("--command", action="store_true", help="peak RSS of `stuffed-mamba eval passkey` per length")
    ap.add_argument("--parallel", action="store_true", help="with --command: all lengths at once")
    ap.add_argument("--env", action="append", default=[], metavar="KEY=VALUE", help="with --command: child env")
    args = ap.parse_args()
    if args.command:
        return command_main(args, [parse_length(x) for x in (args.lengths or "16K,256K").split(",")])
    args.lengths = args.lengths or "64K,1M"

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
