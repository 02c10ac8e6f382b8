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


PURGE = """
import re
from stuffed_mamba import allocator

def rss():
    return int(re.search(r"VmRSS:\\s+(\\d+) kB", open("/proc/self/status").read()).group(1)) * 1024

blocks = [b"x" * (8 << 20) for _ in range(32)]  # 256 MiB written, so resident
del blocks
before = rss()
done = allocator.purge()
print(done, before - rss(), flush=True)
"""


def _purge(tmp_path, **env):
    script = tmp_path / "purge.py"
    script.write_text(PURGE)
    base = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "MALLOC_CONF")}
    p = subprocess.run([sys.executable, str(script)], env={**base, **env}, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    done, released = p.stdout.split()
    return done == "True", int(released)


@pytest.mark.skipif(allocator.find_jemalloc() is None, reason="libjemalloc2 not installed (scripts/install.sh)")
def test_purge_returns_what_jemalloc_keeps_with_purging_off(tmp_path):
    """With purging off, 256 MiB freed stay resident until purge() hands them back to the OS."""
    done, released = _purge(tmp_path, LD_PRELOAD=allocator.find_jemalloc(), MALLOC_CONF=allocator.MALLOC_CONF)
    assert done
    assert abs(released - (256 << 20)) / (256 << 20) < 0.1, f"released {released / 2**20:.0f} MiB of 256"


def test_purge_is_a_no_op_under_another_malloc(tmp_path):
    done, _ = _purge(tmp_path)
    assert not done


MALLCTL_OPTS = """
import ctypes
from stuffed_mamba.allocator import reexec_under_jemalloc
reexec_under_jemalloc()
mallctl = ctypes.CDLL(None).mallctl
for key in ("dirty_decay_ms", "muzzy_decay_ms"):
    value, size = ctypes.c_ssize_t(), ctypes.c_size_t(ctypes.sizeof(ctypes.c_ssize_t))
    assert mallctl(f"opt.{key}".encode(), ctypes.byref(value), ctypes.byref(size), None, 0) == 0
    print(key, value.value)
"""


@pytest.mark.skipif(allocator.find_jemalloc() is None, reason="libjemalloc2 not installed (scripts/install.sh)")
def test_jemalloc_runs_with_the_malloc_conf_chosen(tmp_path):
    """jemalloc's own options after the start-up are MALLOC_CONF's (a misspelt option is only a warning)."""
    script = tmp_path / "opts.py"
    script.write_text(MALLCTL_OPTS)
    base = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "MALLOC_CONF", allocator.OFF_VAR)}
    base.pop("_STUFFED_MAMBA_REEXECUTED", None)
    p = subprocess.run([sys.executable, str(script)], env=base, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and p.stderr == "", p.stderr
    chosen = dict(opt.split(":") for opt in allocator.MALLOC_CONF.split(","))
    seen = dict(line.split() for line in p.stdout.splitlines())
    assert seen == {k: chosen[k] for k in seen} and set(seen) <= set(chosen)


def test_the_chunked_prefill_purges_before_every_chunk_and_at_the_end(monkeypatch):
    """What came before (a long prompt's tokenization) and each chunk's freed pages do not stay resident."""
    import torch

    from stuffed_mamba.model import Mamba2Config, Mamba2LM
    from stuffed_mamba.probes import prefill as prefill_module

    torch.manual_seed(0)
    model = Mamba2LM(Mamba2Config(d_model=32, n_layer=1, d_state=8, headdim=8, chunk_size=8, vocab_size=64)).eval()
    events = []
    monkeypatch.setattr(prefill_module, "purge", lambda: events.append("purge"))
    advance = model.advance
    monkeypatch.setattr(model, "advance", lambda ids, state: events.append(ids.shape[1]) or advance(ids, state))
    ids = torch.randint(0, 64, (1, 50))
    state = prefill_module.prefill(model, ids, chunk_size=16)
    assert events == ["purge", 16, "purge", 16, "purge", 16, "purge", 2, "purge"]
    whole = model(ids).state
    for got, want in zip(state.layers, whole.layers, strict=True):
        for a, b in ((got.conv, want.conv), (got.ssm, want.ssm)):
            assert ((a - b).norm() / b.norm()).item() < 1e-5


EAGER = """
import ctypes, re
from stuffed_mamba import allocator

def rss():
    return int(re.search(r"VmRSS:\\s+(\\d+) kB", open("/proc/self/status").read()).group(1)) * 1024

def decay():
    mallctl = ctypes.CDLL(None).mallctl
    value, size = ctypes.c_ssize_t(), ctypes.c_size_t(ctypes.sizeof(ctypes.c_ssize_t))
    assert mallctl(b"arena.0.dirty_decay_ms", ctypes.byref(value), ctypes.byref(size), None, 0) == 0
    return value.value

before = decay()
with allocator.returning_freed_pages():
    inside = decay()
    blocks = [b"x" * (8 << 20) for _ in range(32)]  # 256 MiB written, so resident
    start = rss()
    del blocks
    released = start - rss()
print(before, inside, decay(), released, flush=True)
"""


@pytest.mark.skipif(allocator.find_jemalloc() is None, reason="libjemalloc2 not installed (scripts/install.sh)")
def test_a_block_returning_freed_pages_frees_at_once_and_restores_purging_off(tmp_path):
    """Inside the block a free reaches the OS at once (no purge call); after it, the decay time is MALLOC_CONF's."""
    script = tmp_path / "eager.py"
    script.write_text(EAGER)
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "MALLOC_CONF")}
    env.update(LD_PRELOAD=allocator.find_jemalloc(), MALLOC_CONF=allocator.MALLOC_CONF)
    p = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    before, inside, after, released = map(int, p.stdout.split())
    chosen = int(dict(opt.split(":") for opt in allocator.MALLOC_CONF.split(","))["dirty_decay_ms"])
    assert (before, inside, after) == (chosen, 0, chosen)
    assert abs(released - (256 << 20)) / (256 << 20) < 0.1, f"released {released / 2**20:.0f} MiB of 256"


def test_returning_freed_pages_is_a_no_op_under_another_malloc(monkeypatch):
    monkeypatch.setattr(allocator, "_mallctl", False)  # as under glibc: no jemalloc to talk to
    ran = []
    with allocator.returning_freed_pages():
        ran.append(True)
    assert ran == [True] and allocator.purge() is False
