"""Progress lines for long-running data commands (documents, tokens, rate), on stderr."""

from __future__ import annotations

import sys
import time


class Progress:
    def __init__(self, what: str, every_s: float = 5.0, stream=sys.stderr):
        self.what, self.every_s, self.stream = what, every_s, stream
        self.t0 = self.last = time.monotonic()

    def update(self, **values) -> None:
        now = time.monotonic()
        if now - self.last < self.every_s:
            return
        self.last = now
        self.stream.write(self.line(**values) + "\n")
        self.stream.flush()

    def line(self, **values) -> str:
        dt = max(time.monotonic() - self.t0, 1e-9)
        parts = [f"{k} {v:,}" for k, v in values.items()]
        rates = [f"{v / dt:,.0f} {k}/s" for k, v in values.items() if k in ("tokens", "bytes")]
        return f"{self.what}: " + ", ".join(parts + rates) + f" ({dt:.0f} s)"
