"""The console command re-executes itself once under jemalloc: same PID, argv and exit code."""

import os
import subprocess
import sys

import pytest

from stuffed_mamba import allocator

SCRIPT = """
import os, sys
from stuffed_mamba.allocator import reexec_under_jemalloc
mapped = "libjemalloc" in open("/proc/self/maps").read()
print(os.getpid(), mapped, os.environ.get("MALLOC_CONF", "-"), sys.argv[1:], flush=True)
reexec_under_jemalloc()
sys.exit(7)
"""


def _run(tmp_path, **env):
    script = tmp_path / "probe.py"
    script.write_text(SCRIPT)
    base = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "MALLOC_CONF", allocator.OFF_VAR)}
    base.pop("_STUFFED_MAMBA_REEXECUTED", None)
    p = subprocess.run(
        [sys.executable, str(script), "a", "b c"], env={**base, **env}, capture_output=True, text=True, timeout=60
    )
    return p.returncode, p.stdout.splitlines()


@pytest.mark.skipif(allocator.find_jemalloc() is None, reason="libjemalloc2 not installed (scripts/install.sh)")
def test_reexecutes_once_under_jemalloc(tmp_path):
    rc, lines = _run(tmp_path)
    assert rc == 7
    assert len(lines) == 2, lines  # once before the exec, once after; never a loop
    before, after = (line.split(" ", 3) for line in lines)
    assert before[0] == after[0], "same PID: signals reach the process that does the work"
    assert (before[1], after[1]) == ("False", "True")
    assert after[2] == allocator.MALLOC_CONF
    assert before[3] == after[3] == "['a', 'b c']"


def test_turned_off_or_missing_library_runs_in_place(tmp_path, monkeypatch):
    rc, lines = _run(tmp_path, STUFFED_MAMBA_JEMALLOC="0")
    assert rc == 7 and len(lines) == 1
    monkeypatch.setattr(allocator, "find_jemalloc", lambda: None)
    monkeypatch.delenv("_STUFFED_MAMBA_REEXECUTED", raising=False)
    monkeypatch.delenv("LD_PRELOAD", raising=False)
    allocator.reexec_under_jemalloc()  # returns: nothing to preload
    assert "malloc" in allocator.describe()


def test_a_users_malloc_conf_wins(tmp_path):
    if allocator.find_jemalloc() is None:
        pytest.skip("libjemalloc2 not installed (scripts/install.sh)")
    rc, lines = _run(tmp_path, MALLOC_CONF="narenas:1")
    assert rc == 7 and lines[-1].split(" ", 3)[2] == "narenas:1"


def test_the_console_command_re_executes_and_a_python_call_does_not(monkeypatch, capsys):
    """`stuffed-mamba ...` (main() reading sys.argv) asks for the re-execution; main([...]) from
    Python (tests, notebooks) never replaces the caller's process."""
    from stuffed_mamba.cli import main

    calls = []
    monkeypatch.setattr(allocator, "reexec_under_jemalloc", lambda: calls.append("reexec"))
    command = ["fit", "recipes/tiny_cpu.yaml", "--print-config"]
    assert main(command) == 0 and calls == []
    monkeypatch.setattr(sys, "argv", ["stuffed-mamba", *command])
    assert main() == 0 and calls == ["reexec"]
    capsys.readouterr()
