"""One default run per test session: `stuffed-mamba fit recipes/tiny_cpu.yaml` (run.dir the only
override), shared by the slow dashboard tests (several CPU minutes; more on a loaded machine).

STUFFED_MAMBA_DEFAULT_RUN=DIR reuses a finished default run in DIR instead of training one
(e.g. the run scripts/screenshot_tensorboard.py trained)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def default_run(tmp_path_factory) -> Path:
    given = os.environ.get("STUFFED_MAMBA_DEFAULT_RUN")
    if given:
        run_dir = Path(given).resolve()
        assert (run_dir / "checkpoints" / "last.ckpt").is_file(), f"STUFFED_MAMBA_DEFAULT_RUN={given}: no finished run"
        return run_dir
    run_dir = tmp_path_factory.mktemp("default_run") / "tiny_cpu"
    cmd = [sys.executable, "-m", "stuffed_mamba", "fit", str(ROOT / "recipes" / "tiny_cpu.yaml"), f"run.dir={run_dir}"]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=3600)
    assert done.returncode == 0, done.stderr[-3000:]
    return run_dir
