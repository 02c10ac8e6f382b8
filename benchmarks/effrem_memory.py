"""Peak RSS of `stuffed-mamba eval effrem` does not grow with T: 64K against 4K (issue 23, acceptance 3).

    python benchmarks/effrem_memory.py                     # 4K and 64K: ~2 CPU-minutes here
    python benchmarks/effrem_memory.py --lengths 4K,16K,64K --t-fractions 0.125,0.5,0.875

Each length is one `stuffed-mamba eval effrem` process (the console command, its default start-up)
on a random checkpoint of recipes/tiny_cpu.yaml's shape with its tokenizer, on the offline sample
corpus (data/sample, documents concatenated), one sequence, T = that length and t at the given
fractions of T. The table has each process's peak RSS (wait4's ru_maxrss: reading and tokenizing the
text, the full-context and prefix-free runs, Python and torch included), its ratio to the first
length's, wall and CPU time. Target: ratio <= 1.2.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from passkey_memory import console_command, parse_length, tiny_checkpoint  # noqa: E402


def run_command(T: int, checkpoint: Path, out: Path, args) -> dict:
    """One `stuffed-mamba eval effrem` at T in a fresh process: its peak RSS and times."""
    cmd = [*console_command(), "eval", "effrem", "--checkpoint", str(checkpoint), "--lengths", str(T)]
    cmd += ["--t-fractions", args.t_fractions, "--samples", "1", "--chunk", str(args.prefill_chunk)]
    cmd += [
        "--data",
        str(ROOT / "data" / "sample"),
        "--min-doc-tokens",
        "1024",
        "--train-length",
        str(args.train_length),
    ]
    cmd += ["--device", "cpu", "--no-progress", "--out", str(out / f"eval_{T}")]
    log = out / f"eval_{T}.log"
    t0 = time.perf_counter()
    with open(log, "w") as f:
        p = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT)
        _, status, usage = os.wait4(p.pid, 0)  # the rusage of this child alone
    if os.waitstatus_to_exitcode(status):
        raise SystemExit(f"T={T}: exit {os.waitstatus_to_exitcode(status)}: {log.read_text().strip()[-400:]}")
    return {
        "T": T,
        "rss": usage.ru_maxrss * 1024,
        "secs": time.perf_counter() - t0,
        "cpu": usage.ru_utime + usage.ru_stime,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lengths", default="4K,64K", help="T per process; the first is the reference")
    ap.add_argument("--t-fractions", default="0.5", help="t as fractions of T (comma-separated)")
    ap.add_argument("--prefill-chunk", type=int, default=4096)
    ap.add_argument("--train-length", type=int, default=128, help="T_train (only marks the figure)")
    args = ap.parse_args()
    lengths = [parse_length(x) for x in args.lengths.split(",")]
    print(
        f"`stuffed-mamba eval effrem`, tiny_cpu's shape, 1 sequence, t/T in {{{args.t_fractions}}}, "
        f"prefill chunk {args.prefill_chunk}"
    )
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        tiny_checkpoint(out / "tiny")
        for T in lengths:
            rows.append(run_command(T, out / "tiny", out, args))
            print(f"  T = {T:>9,} done in {rows[-1]['secs']:.0f} s", flush=True)
    ref = rows[0]
    print(f"\n{'T':>10}  {'peak RSS MiB':>12}  {'ratio':>6}  {'seconds':>8}  {'CPU s':>7}")
    for r in rows:
        print(
            f"{r['T']:>10,}  {r['rss'] / 2**20:>12.0f}  {r['rss'] / ref['rss']:>6.3f}  {r['secs']:>8.0f}  {r['cpu']:>7.0f}"
        )
    worst = max(r["rss"] for r in rows) / ref["rss"]
    verdict = "OK" if worst <= 1.2 else "FAIL"
    print(f"\nlargest peak RSS / peak RSS at T = {ref['T']:,} = {worst:.3f} (target <= 1.2): {verdict}")
    return 0 if worst <= 1.2 else 1


if __name__ == "__main__":
    sys.exit(main())
