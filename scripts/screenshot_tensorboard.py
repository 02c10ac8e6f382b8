#!/usr/bin/env python
"""Screenshot the "forgetting" dashboard of a real TensorBoard over a real tiny training run.

    python scripts/screenshot_tensorboard.py                     # train runs/screenshot, then shoot
    python scripts/screenshot_tensorboard.py --run-dir runs/tiny_cpu --no-train

1. Unless --no-train: exactly the README's `stuffed-mamba fit recipes/tiny_cpu.yaml`, into
   --run-dir (`run.dir=` is the only override: the dashboard shown is the one a user gets).
2. Starts `tensorboard --logdir RUN/tensorboard --host 127.0.0.1` on a free port and waits for it.
3. Headless Chromium (Debian's `chromium` package: `apt-get install chromium`) loads the
   custom-scalars page (the "forgetting" layout) and the images page and writes PNGs.
4. Stops the TensorBoard it started.

Not run in CI (needs Chromium and minutes of CPU). Output: --out-dir/forgetting_dashboard.png
and --out-dir/forgetting_images.png.
"""

from __future__ import annotations

import argparse
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train(run_dir: Path) -> None:
    cmd = [sys.executable, "-m", "stuffed_mamba", "fit", str(ROOT / "recipes" / "tiny_cpu.yaml"), f"run.dir={run_dir}"]
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, cwd=ROOT, check=True)


def wait_for(url: str, timeout: float = 90.0) -> None:
    t0 = time.monotonic()
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() - t0 > timeout:
            raise TimeoutError(f"TensorBoard did not answer at {url} within {timeout:.0f} s")
        time.sleep(1.0)


def shoot(chromium: str, url: str, out: Path, size: str, wait_ms: int) -> None:
    cmd = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
           "--disable-dev-shm-usage", f"--window-size={size}", f"--virtual-time-budget={wait_ms}",
           f"--screenshot={out}", url]
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=300)
    if not out.is_file() or out.stat().st_size == 0:
        raise RuntimeError(f"chromium wrote no screenshot at {out}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run-dir", default=str(ROOT / "runs" / "screenshot"))
    ap.add_argument("--no-train", action="store_true", help="use the existing run in --run-dir")
    ap.add_argument("--out-dir", default=str(ROOT / "docs" / "img"))
    ap.add_argument("--size", default="1600,1400", help="browser window WIDTH,HEIGHT")
    ap.add_argument("--wait-ms", type=int, default=20000, help="page time before the screenshot")
    args = ap.parse_args()

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        print("chromium not found: apt-get install chromium", file=sys.stderr)
        return 2
    run_dir = Path(args.run_dir).resolve()
    if not args.no_train:
        train(run_dir)
    logdir = run_dir / "tensorboard"
    if not any(logdir.glob("events.out.tfevents.*")):
        print(f"no TensorBoard events in {logdir}", file=sys.stderr)
        return 2
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    port = free_port()
    tb = subprocess.Popen(
        [sys.executable, "-m", "tensorboard.main", "--logdir", str(logdir), "--host", "127.0.0.1",
         "--port", str(port), "--reload_interval", "0"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        wait_for(f"{base}/data/runs")
        shoot(chromium, f"{base}/#custom_scalars", out_dir / "forgetting_dashboard.png", args.size, args.wait_ms)
        shoot(chromium, f"{base}/#images", out_dir / "forgetting_images.png", args.size, args.wait_ms)
    finally:
        tb.terminate()
        try:
            tb.wait(timeout=20)
        except subprocess.TimeoutExpired:
            tb.kill()
    for name in ("forgetting_dashboard.png", "forgetting_images.png"):
        print(f"wrote {out_dir / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
