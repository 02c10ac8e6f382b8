"""Independent references for the tests: mamba_ssm's `ssd_minimal_discrete`, loaded by file path.

`mamba_ssm/modules/ssd_minimal.py` needs only torch and einops, but its module imports the Triton
kernels at the top, which do not import on a CPU-only machine; we read the file and drop that line.
"""

from __future__ import annotations

import importlib.util
import types
from pathlib import Path

import pytest


def load_ssd_minimal() -> types.ModuleType:
    spec = importlib.util.find_spec("mamba_ssm")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("mamba_ssm is not installed (bash scripts/install.sh dev installs it)")
    path = Path(list(spec.submodule_search_locations)[0]) / "modules" / "ssd_minimal.py"
    src = "\n".join(line for line in path.read_text().splitlines() if "import mamba_chunk_scan_combined" not in line)
    mod = types.ModuleType("ssd_minimal_reference")
    exec(compile(src, str(path), "exec"), mod.__dict__)
    return mod
