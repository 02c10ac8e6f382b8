"""scripts/install.sh picks torch's build from the machine (issue 22) and installs from the lock
(issue 19), checked through its dry run (INSTALL_DRY_RUN=1 prints the commands) with fakes of the
GPU detection (an `nvidia-smi` on PATH) and of PyTorch's CPU index (a local HTTP server, or a
closed port)."""

from __future__ import annotations

import functools
import http.server
import os
import subprocess
import threading
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CLOSED = "http://127.0.0.1:9"  # discard port: nothing listens


def plan(tmp_path: Path, *args: str, gpu: bool = False, **env: str) -> subprocess.CompletedProcess:
    path = os.environ["PATH"]
    if gpu:
        fake = tmp_path / "bin"
        fake.mkdir(exist_ok=True)
        (fake / "nvidia-smi").write_text("#!/bin/sh\necho 'GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-0)'\n")
        (fake / "nvidia-smi").chmod(0o755)
        path = f"{fake}:{path}"
    mine = {k: v for k, v in os.environ.items() if k not in ("TORCH_BUILD", "TORCH_INDEX_URL")}
    e = {**mine, "PATH": path, "INSTALL_DRY_RUN": "1", "TORCH_CPU_INDEX": CLOSED, **env}
    return subprocess.run(
        ["bash", str(ROOT / "scripts/install.sh"), *args], env=e, capture_output=True, text=True, timeout=60
    )


def torch_line(out: str) -> str:
    (line,) = [l for l in out.splitlines() if "torch==2.13.0" in l]
    return line


@pytest.fixture
def cpu_index(tmp_path):
    """A local stand-in for https://download.pytorch.org/whl/cpu (it only has to answer /torch/)."""
    root = tmp_path / "index"
    (root / "torch").mkdir(parents=True)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_no_gpu_takes_the_cpu_build_from_pytorchs_cpu_index(tmp_path, cpu_index):
    r = plan(tmp_path, TORCH_CPU_INDEX=cpu_index)
    assert r.returncode == 0, r.stderr
    assert "torch 2.13.0, cpu build, from " + cpu_index in r.stdout
    assert torch_line(r.stdout).endswith(f"-c constraints.txt --index-url {cpu_index}")
    assert r.stderr == ""


def test_an_unreachable_cpu_index_falls_back_to_pypi_in_one_line(tmp_path):
    r = plan(tmp_path)
    assert r.returncode == 0, r.stderr
    assert "--index-url" not in torch_line(r.stdout)
    (line,) = r.stderr.splitlines()
    assert line.startswith(
        f"install.sh: PyTorch's CPU index ({CLOSED}) cannot be reached; torch 2.13.0 comes from PyPI"
    )


def test_a_gpu_takes_the_cuda_build_and_the_override_wins(tmp_path, cpu_index):
    r = plan(tmp_path, gpu=True, TORCH_CPU_INDEX=cpu_index)
    assert "torch 2.13.0, cuda build" in r.stdout and "--index-url" not in torch_line(r.stdout)
    r = plan(tmp_path, gpu=True, TORCH_BUILD="cpu", TORCH_CPU_INDEX=cpu_index)
    assert torch_line(r.stdout).endswith(f"--index-url {cpu_index}")
    r = plan(tmp_path, TORCH_BUILD="cuda", TORCH_CPU_INDEX=cpu_index)
    assert "cuda build" in r.stdout and "--index-url" not in torch_line(r.stdout)


def test_every_pip_install_uses_the_lock(tmp_path):
    for mode in ("base", "dev"):
        r = plan(tmp_path, mode)
        pips = [l for l in r.stdout.splitlines() if "pip install" in l]
        assert len(pips) >= 2 and all("-c constraints.txt" in l for l in pips), pips
    lock = (ROOT / "constraints.txt").read_text()
    for name in ("torch==2.13.0", "transformers==", "lightning==", "deepspeed==", "mamba_ssm==", "ruff=="):
        assert "\n" + name in lock, f"constraints.txt pins no {name}"


def test_bad_mode_and_build_are_one_line(tmp_path):
    r = plan(tmp_path, "gpu")
    assert r.returncode == 2 and r.stderr.splitlines() == [
        "install.sh: unknown mode 'gpu': base (default), dev or cuda"
    ]
    r = plan(tmp_path, TORCH_BUILD="rocm")
    assert r.returncode == 2 and r.stderr.splitlines() == ["install.sh: TORCH_BUILD=rocm: use cpu or cuda"]
