#!/usr/bin/env python
"""Screenshot the "forgetting" dashboard of a real TensorBoard over a real tiny training run.

    python scripts/screenshot_tensorboard.py                     # train runs/screenshot, then shoot
    python scripts/screenshot_tensorboard.py --run-dir runs/tiny_cpu --no-train

1. Unless --no-train: exactly the README's `stuffed-mamba fit recipes/tiny_cpu.yaml`, into
   --run-dir (`run.dir=` is the only override: the dashboard shown is the one a user gets).
2. Starts `tensorboard --logdir RUN/tensorboard --host 127.0.0.1` on a free port and waits for it.
3. Headless Chromium (Debian's `chromium` package; `scripts/install.sh dev` installs it as root),
   driven over the DevTools protocol, opens the dashboard as the README says: the URL
   `/#custom_scalars&_smoothingWeight=0` (TensorBoard 2.21 reads the smoothing from the URL's hash)
   and "Ignore outliers in chart scaling" unticked (kept in the browser's local storage, not the
   URL: the script writes it there as the checkbox does), in a laptop-sized window, and writes PNGs
   of the dashboard's first screen and of the images tab.
4. Stops the TensorBoard it started.

tests/callbacks/test_screenshot.py (slow suite) runs the same steps and checks from the page's DOM
that the first screen shows the first section. Output: --out-dir/forgetting_dashboard.png and
--out-dir/forgetting_images.png.
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


# The README's URL: smoothing 0 from the hash (TensorBoard's default is 0.6)
DASHBOARD_HASH = "#custom_scalars&_smoothingWeight=0"

# What the page shows, read from its DOM (Polymer elements inside shadow roots): each category of
# the custom-scalars dashboard (title, opened) and each chart card's title and box in the viewport.
INSPECT_JS = """(() => {
  const all = [];
  // the dashboard lives in the plugin's iframe (same origin), its elements in shadow roots;
  // boxes are in the page's viewport: an iframe's offset is added
  const walk = (root, dx, dy) => {
    for (const e of root.querySelectorAll('*')) {
      all.push([e, dx, dy]);
      if (e.shadowRoot) walk(e.shadowRoot, dx, dy);
      if (e.localName === 'iframe' && e.contentDocument) {
        const r = e.getBoundingClientRect();
        walk(e.contentDocument, dx + r.left, dy + r.top);
      }
    }
  };
  walk(document, 0, 0);
  const box = ([e, dx, dy]) => {
    const r = e.getBoundingClientRect();
    return {top: r.top + dy, bottom: r.bottom + dy, left: r.left + dx, right: r.right + dx};
  };
  const named = (name) => all.filter(([e]) => e.localName === name);
  const [dash] = named('tf-custom-scalar-dashboard').map(([e]) => e);
  return {
    viewport: {width: window.innerWidth, height: window.innerHeight},
    smoothing: dash ? dash._smoothingWeight : null,
    ignore_outliers: dash ? dash._ignoreYOutliers : null,
    categories: named('tf-category-paginated-view')
      .map(([e]) => ({title: e.category && e.category.name, opened: !!e.opened})),
    charts: named('tf-custom-scalar-multi-line-chart-card').map((x) => ({title: x[0].title, ...box(x)})),
  };
})()"""


class Page:
    """One tab of headless Chromium on a TensorBoard at `base`, set up as the README says."""

    def __init__(self, chromium: str, base: str):
        self.browser, self.base = DevTools(chromium), base
        target = self.browser.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        self.tab = self.browser.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        self.call("Page.navigate", {"url": f"{base}/"})  # local storage belongs to the origin
        time.sleep(3)
        # the README's one click: "Ignore outliers in chart scaling" off (the checkbox writes this)
        self.evaluate("localStorage.setItem('_ignoreYOutliers', 'false')")

    def call(self, method: str, params: dict | None = None) -> dict:
        return self.browser.call(method, params, self.tab)

    def evaluate(self, expression: str):
        answer = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True})
        if "exceptionDetails" in answer:
            raise RuntimeError(f"chromium: {answer['exceptionDetails']}")
        return answer["result"].get("value")

    def open(self, url: str, size: str, wait_ms: int) -> None:
        width, height = (int(v) for v in size.split(","))
        self.call(
            "Emulation.setDeviceMetricsOverride",
            {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
        )
        print("+ chromium", url, size, flush=True)
        self.call("Page.navigate", {"url": url})
        time.sleep(wait_ms / 1000)

    def screenshot(self, out: Path) -> None:
        png = base64.b64decode(self.call("Page.captureScreenshot", {"format": "png"})["data"])
        if not png:
            raise RuntimeError("chromium returned no screenshot")
        out.write_bytes(png)

    def inspect(self) -> dict:
        return self.evaluate(INSPECT_JS)

    def wait_for_charts(self, timeout: float = 180.0) -> dict:
        """inspect() once the dashboard's chart cards are on the page and stopped changing (a loaded
        machine serves the layout late), then a few seconds more for their data."""
        t0, last = time.monotonic(), None
        while time.monotonic() - t0 < timeout:
            seen = self.inspect()
            if seen["charts"] and seen == last:
                time.sleep(5)
                return self.inspect()
            last = seen
            time.sleep(2)
        raise TimeoutError(f"no chart of the dashboard appeared within {timeout:.0f} s")

    def close(self) -> None:
        self.browser.close()


@contextlib.contextmanager
def tensorboard(logdir: Path):
    """A TensorBoard on 127.0.0.1 over `logdir`; yields its base URL."""
    port = free_port()
    cmd = [sys.executable, "-m", "tensorboard.main", "--logdir", str(logdir), "--host", "127.0.0.1"]
    tb = subprocess.Popen(
        [*cmd, "--port", str(port), "--reload_interval", "0"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        base = f"http://127.0.0.1:{port}"
        wait_for(f"{base}/data/runs")
        yield base
    finally:
        tb.terminate()
        try:
            tb.wait(timeout=20)
        except subprocess.TimeoutExpired:
            tb.kill()


def find_chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run-dir", default=str(ROOT / "runs" / "screenshot"))
    ap.add_argument("--no-train", action="store_true", help="use the existing run in --run-dir")
    ap.add_argument("--out-dir", default=str(ROOT / "docs" / "img"))
    # a common laptop's browser viewport: the first section must fit it
    ap.add_argument("--size", default="1440,900", help="browser window WIDTH,HEIGHT of the dashboard")
    ap.add_argument("--images-size", default="1440,1100", help="browser window WIDTH,HEIGHT of the images tab")
    ap.add_argument("--wait-ms", type=int, default=15000, help="page loading time before each screenshot")
    args = ap.parse_args()

    chromium = find_chromium()
    if chromium is None:
        print("chromium not found: apt-get install chromium (or scripts/install.sh dev as root)", file=sys.stderr)
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
    with tensorboard(logdir) as base:
        page = Page(chromium, base)
        try:
            page.open(f"{base}/{DASHBOARD_HASH}", args.size, args.wait_ms)
            page.wait_for_charts()
            page.screenshot(out_dir / "forgetting_dashboard.png")
            page.open(f"{base}/#images", args.images_size, args.wait_ms)
            page.screenshot(out_dir / "forgetting_images.png")
        finally:
            page.close()
    for name in ("forgetting_dashboard.png", "forgetting_images.png"):
        print(f"wrote {out_dir / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
