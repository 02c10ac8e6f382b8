"""The tests' kit (import as `from tests.helpers import rel_err, ...`): what several test packages
need, written once. Suite-specific fixtures live in each folder's conftest.py and build on these.

- `rel_err(a, b)`: max |a - b| / max |b|, the one comparison number of the tests
- `TINY_ARCH`, `tiny_config(**kw)`, `tiny_model(seed=0, **kw)`: the tiny Mamba-2 (2 layers,
  d_model 32) that every unit test builds; suites state only the fields they change
- `tiny_recipe_overrides(run_dir, *extra)`: recipes/tiny_cpu.yaml shrunk to seconds (no probes)
- `free_port()`: a TCP port on 127.0.0.1 that was free a moment ago (closed again: connecting is refused)
- `QuietFiles`, `serve(root, handler=QuietFiles)`: a folder over HTTP on 127.0.0.1 for a `with` block
"""

from __future__ import annotations

import contextlib
import functools
import socket
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import torch

# the architecture of the tests' tiny model; vocab_size is the suite's (tokenizer or fake loader)
TINY_ARCH = dict(d_model=32, n_layer=2, d_state=16, headdim=16, chunk_size=16)

# the config.json of state-spaces/mamba2-370m (its shape: an official mamba_ssm checkpoint's)
OFFICIAL_370M_CONFIG_JSON = {
    "d_model": 1024,
    "d_intermediate": 0,
    "n_layer": 48,
    "vocab_size": 50277,
    "ssm_cfg": {"layer": "Mamba2"},
    "attn_layer_idx": [],
    "attn_cfg": {},
    "rms_norm": True,
    "residual_in_fp32": True,
    "fused_add_norm": True,
    "pad_vocab_size_multiple": 16,
    "tie_embeddings": True,
}


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b|: one number per comparison, robust to near-zero entries."""
    a, b = a.detach().double(), b.detach().double()
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


def tiny_config(**kw):
    """`Mamba2Config` of TINY_ARCH (vocabulary 64) with the fields in `kw` changed."""
    from stuffed_mamba.model import Mamba2Config

    return Mamba2Config(**{**TINY_ARCH, "vocab_size": 64, **kw})


def tiny_model(seed: int = 0, **kw):
    """`Mamba2LM(tiny_config(**kw))`, initialised from torch's global generator seeded with `seed`."""
    from stuffed_mamba.model import Mamba2LM

    torch.manual_seed(seed)
    return Mamba2LM(tiny_config(**kw))


def tiny_recipe_overrides(run_dir, *extra: str) -> list[str]:
    """Overrides that shrink recipes/tiny_cpu.yaml to seconds: TINY_ARCH over the byte tokenizer,
    3 segments of 16 tokens, 2 rows, no probes; `extra` last (they win)."""
    return [
        *(f"model.{k}={v}" for k, v in TINY_ARCH.items()),
        "data.tokenizer=bytes",
        "data.segments=3",
        "data.train_length=16",
        "data.batch_size=2",
        "optim.total_steps=60",
        "optim.warmup_steps=3",
        "optim.lr=3e-3",
        "probes.enabled=false",
        "trainer.enable_progress_bar=false",
        f"run.dir={run_dir}",
        "run.checkpoint_every_n_steps=6",
        *extra,
    ]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class QuietFiles(SimpleHTTPRequestHandler):
    """Serves the folder given to `serve`, without a log line per request; subclass and override
    `do_GET` for a misbehaving server."""

    def log_message(self, *args) -> None:
        pass


@contextlib.contextmanager
def serve(root: str | Path, handler: type[SimpleHTTPRequestHandler] = QuietFiles) -> Iterator[str]:
    """`root` over HTTP on 127.0.0.1 while the block runs; yields the base URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=str(root)))
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
