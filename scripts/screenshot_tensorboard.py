#!/usr/bin/env python
"""Screenshot the "forgetting" dashboard of a real TensorBoard over a real tiny training run.

    python scripts/screenshot_tensorboard.py                     # train runs/screenshot, then shoot
    python scripts/screenshot_tensorboard.py --run-dir runs/tiny_cpu --no-train

1. Unless --no-train: exactly the README's `stuffed-mamba fit recipes/tiny_cpu.yaml`, into
   --run-dir (`run.dir=` is the only override: the dashboard shown is the one a user gets).
2. Starts `tensorboard --logdir RUN/tensorboard --host 127.0.0.1` on a free port and waits for it.
3. Headless Chromium (Debian's `chromium` package: `apt-get install chromium`), driven over the
   DevTools protocol, loads the custom-scalars page (the "forgetting" layout; smoothing 0 and
   "Ignore outliers in chart scaling" off, so every point is drawn where it was measured) and
   the images page and writes PNGs.
4. Stops the TensorBoard it started.

Not run in CI (needs Chromium and minutes of CPU). Output: --out-dir/forgetting_dashboard.png
and --out-dir/forgetting_images.png.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import fcntl
import json
import os
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


class DevTools:
    """Headless Chromium driven over the DevTools protocol on --remote-debugging-pipe (it reads
    NUL-terminated JSON on fd 3 and answers on fd 4): unlike --screenshot it can set the page's
    local storage, where TensorBoard keeps "Ignore outliers in chart scaling"."""

    def __init__(self, chromium: str):
        to_chrome, self._w = os.pipe()
        self._r, from_chrome = os.pipe()
        # copies above fd 4 so that placing them on 3 and 4 in the child cannot clobber one another
        hi_in, hi_out = fcntl.fcntl(to_chrome, fcntl.F_DUPFD, 10), fcntl.fcntl(from_chrome, fcntl.F_DUPFD, 10)

        def on_fds_3_and_4():
            os.dup2(hi_in, 3)
            os.dup2(hi_out, 4)

        self.proc = subprocess.Popen(
            [
                chromium,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--hide-scrollbars",
                "--no-first-run",
                "--disable-dev-shm-usage",
                "--remote-debugging-pipe",
                "about:blank",
            ],
            preexec_fn=on_fds_3_and_4,
            close_fds=False,  # close_fds would run after preexec_fn and close 3 and 4
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for fd in (to_chrome, from_chrome, hi_in, hi_out):
            os.close(fd)
        self._buf, self._id = b"", 0

    def call(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        self._id += 1
        msg = {"id": self._id, "method": method, "params": params or {}, **({"sessionId": session} if session else {})}
        os.write(self._w, json.dumps(msg).encode() + b"\0")
        while True:  # events and other answers are skipped
            while b"\0" not in self._buf:
                chunk = os.read(self._r, 1 << 16)
                if not chunk:
                    raise RuntimeError(f"chromium exited during {method}")
                self._buf += chunk
            raw, self._buf = self._buf.split(b"\0", 1)
            answer = json.loads(raw)
            if answer.get("id") == self._id:
                if "error" in answer:
                    raise RuntimeError(f"chromium: {method}: {answer['error']}")
                return answer["result"]

    def close(self) -> None:
        with contextlib.suppress(RuntimeError, OSError):
            self.call("Browser.close")
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        os.close(self._w)
        os.close(self._r)


def shoot(chromium: str, base: str, pages: list[tuple[str, Path, str]], wait_ms: int) -> None:
    """Each (url, png, "WIDTH,HEIGHT") of `pages`, after `wait_ms` of loading, unsmoothed and with
    outliers drawn (TensorBoard's defaults are smoothing 0.6, outliers cut off the scale)."""
    browser = DevTools(chromium)
    try:
        target = browser.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        tab = browser.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        browser.call("Page.navigate", {"url": f"{base}/"}, tab)  # local storage belongs to the origin
        time.sleep(3)
        browser.call("Runtime.evaluate", {"expression": "localStorage.setItem('_ignoreYOutliers', 'false')"}, tab)
        for url, out, size in pages:
            width, height = (int(v) for v in size.split(","))
            browser.call(
                "Emulation.setDeviceMetricsOverride",
                {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
                tab,
            )
            print("+ chromium", url, size, flush=True)
            browser.call("Page.navigate", {"url": url}, tab)
            time.sleep(wait_ms / 1000)
            png = base64.b64decode(browser.call("Page.captureScreenshot", {"format": "png"}, tab)["data"])
            if not png:
                raise RuntimeError(f"chromium returned no screenshot of {url}")
            out.write_bytes(png)
    finally:
        browser.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run-dir", default=str(ROOT / "runs" / "screenshot"))
    ap.add_argument("--no-train", action="store_true", help="use the existing run in --run-dir")
    ap.add_argument("--out-dir", default=str(ROOT / "docs" / "img"))
    # the default run's dashboard is 45 charts, three per row at this width: 4800 px shows them all
    ap.add_argument("--size", default="1600,4800", help="browser window WIDTH,HEIGHT of the dashboard")
    ap.add_argument("--images-size", default="1600,1100", help="browser window WIDTH,HEIGHT of the images tab")
    ap.add_argument("--wait-ms", type=int, default=15000, help="page loading time before each screenshot")
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
        [
            sys.executable,
            "-m",
            "tensorboard.main",
            "--logdir",
            str(logdir),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--reload_interval",
            "0",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        wait_for(f"{base}/data/runs")
        shoot(
            chromium,
            base,
            [
                (f"{base}/#custom_scalars&_smoothingWeight=0", out_dir / "forgetting_dashboard.png", args.size),
                (f"{base}/#images", out_dir / "forgetting_images.png", args.images_size),
            ],
            args.wait_ms,
        )
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
