import os
import random
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_RUN_SECONDS: dict[Path, float] = {}
# Tests marked `extended("why")` repeat what CI's tests already cover, at a cost CI's 45 minutes cannot
# hold; they run with STUFFED_MAMBA_EXTENDED=1 (docs/testing.md lists them) and are skipped otherwise,
# the reason saying what covers them.
EXTENDED = bool(os.environ.get("STUFFED_MAMBA_EXTENDED"))


def pytest_collection_modifyitems(config, items):
    if EXTENDED:
        return
    for item in items:
        marker = item.get_closest_marker("extended")
        if marker is not None:
            why = marker.args[0] if marker.args else "covered by CI's tests"
            item.add_marker(pytest.mark.skip(reason=f"extended ({why}); STUFFED_MAMBA_EXTENDED=1 runs it"))


@pytest.fixture(autouse=True)
def _seed_and_dtype():
    """Every test starts from the same seeds and fp32 defaults, whatever ran before it."""
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    dtype = torch.get_default_dtype()
    threads = torch.get_num_threads()
    yield
    torch.set_default_dtype(dtype)
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def default_run(tmp_path_factory) -> Path:
    """One default run per test session, `stuffed-mamba fit recipes/tiny_cpu.yaml` with run.dir its
    only override, shared by the slow tests that need it (the dashboard's, the recipe's time and
    learning check): several CPU minutes each time it is trained. Its wall time is in
    `DEFAULT_RUN_SECONDS[run_dir]`. STUFFED_MAMBA_DEFAULT_RUN=DIR reuses a finished default run
    (e.g. the one scripts/screenshot_tensorboard.py trained); its time is then unknown."""
    given = os.environ.get("STUFFED_MAMBA_DEFAULT_RUN")
    if given:
        run_dir = Path(given).resolve()
        assert (run_dir / "checkpoints" / "last.ckpt").is_file(), f"STUFFED_MAMBA_DEFAULT_RUN={given}: no finished run"
        return run_dir
    run_dir = tmp_path_factory.mktemp("default_run") / "tiny_cpu"
    cmd = [sys.executable, "-m", "stuffed_mamba", "fit", str(ROOT / "recipes" / "tiny_cpu.yaml"), f"run.dir={run_dir}"]
    t0 = time.monotonic()
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=3600)
    DEFAULT_RUN_SECONDS[run_dir] = time.monotonic() - t0
    assert done.returncode == 0, done.stderr[-3000:]
    return run_dir
