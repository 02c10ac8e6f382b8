"""Asking for the "mamba_ssm" backend where its kernels cannot import is a clear error, never a fallback."""

from __future__ import annotations

import subprocess
import sys

# A clean process: no test shims (this package's fixture patches the pytest process).
_PROBE = """
import importlib.util
print('HAS_KERNELS:', importlib.util.find_spec('selective_scan_cuda') is not None)
from stuffed_mamba.ops import get_backend
try:
    get_backend('mamba_ssm')
except ImportError as e:
    print('ERROR:', e)
else:
    print('IMPORTED')
"""


def test_missing_kernels_is_a_one_line_error_naming_the_install():
    proc = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout.splitlines()
    if "HAS_KERNELS: True" in out:  # a CUDA machine with the extra installed: it must import
        assert "IMPORTED" in out
        return
    errors = [line for line in out if line.startswith("ERROR:")]
    assert len(errors) == 1, proc.stdout
    assert "bash scripts/install.sh cuda" in errors[0]
    print(errors[0])
