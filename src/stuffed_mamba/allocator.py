"""Run the `stuffed-mamba` command under jemalloc, with purging off, when the library is installed.

Long segments on CPU allocate and free tensors of hundreds of MB at every layer. glibc's malloc
returns such blocks to the OS at `free` and maps them again at the next use, so the process
page-faults continuously (50 million minor faults in one 32K-token step of the 130M recipe; from
8K tokens on, system time as large as user time). jemalloc with `dirty_decay_ms:-1,muzzy_decay_ms:-1`
keeps freed pages for reuse (measured: 16K tokens, 58.5 s instead of 142 s), the allocator set-up of
Intel's PyTorch CPU guidance. A preload must be there when the process starts, so the command
re-executes itself once (`os.execve`: same PID, argv and exit code; signals reach the real process).

`STUFFED_MAMBA_JEMALLOC=0` turns it off; `bash scripts/install.sh` installs Debian's `libjemalloc2`.

Purging off has a price where memory should stay flat: what a phase frees stays resident. The
passkey evaluation tokenizes a 256K-token prompt (~170 MB of transient memory under either malloc)
and then prefills it chunk by chunk; the prompt's pages stayed resident beside the prefill's (peak
RSS at 256K 1.33-1.43x of 16K's; glibc 1.10x). `purge()` hands every arena's free pages back to the
OS at such a boundary (the chunked prefill calls it before each chunk), `returning_freed_pages()`
makes a block (the prompt's tokenization) return them at once; MALLOC_CONF stays, so training
steps keep their pages. A finite decay time (`dirty_decay_ms:10000`) also lowers the
prefill's peak, but applies to the training steps too, whose speed is what purging off is for
(docs/probes.md, "Memory").
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import sys
import sysconfig

from stuffed_mamba import early_signals

OFF_VAR = "STUFFED_MAMBA_JEMALLOC"
_GUARD_VAR = "_STUFFED_MAMBA_REEXECUTED"  # set in the re-executed process: never re-execute twice
MALLOC_CONF = "dirty_decay_ms:-1,muzzy_decay_ms:-1"
# jemalloc >= 5's MALLCTL_ARENAS_ALL: "arena.<i>.purge" with this i purges every arena
_ALL_ARENAS = 4096
_mallctl = None  # jemalloc's mallctl, looked up once: None = not looked up, False = not there


def find_jemalloc() -> str | None:
    """Path of libjemalloc.so.2 in the usual library folders (Debian multiarch, lib64, the env's lib)."""
    multiarch = sysconfig.get_config_var("MULTIARCH") or ""
    folders = [os.path.join(sys.prefix, "lib"), "/usr/local/lib", f"/usr/lib/{multiarch}", "/usr/lib64", "/usr/lib"]
    for folder in folders:
        path = os.path.join(folder, "libjemalloc.so.2")
        if os.path.isfile(path):
            return path
    return None


def _preloaded() -> bool:
    return "libjemalloc" in os.environ.get("LD_PRELOAD", "")


def reexec_under_jemalloc() -> None:
    """Replace this process by the same command with jemalloc preloaded; return if that cannot or should not be."""
    if os.environ.get(OFF_VAR, "1") == "0" or os.environ.get(_GUARD_VAR) or _preloaded():
        return
    lib = find_jemalloc()
    if lib is None or not sys.platform.startswith("linux") or not sys.executable:
        return
    env = dict(os.environ)
    env[_GUARD_VAR] = "1"
    env["LD_PRELOAD"] = ":".join(p for p in (lib, env.get("LD_PRELOAD", "")) if p)
    env.setdefault("MALLOC_CONF", MALLOC_CONF)  # a user's own MALLOC_CONF wins
    early_signals.hold_across_exec(env)  # a Slurm USR1 must survive the exec (early_signals.py)
    sys.stdout.flush()
    sys.stderr.flush()
    # sys.orig_argv is the interpreter's own command line: the console script's path or `-m stuffed_mamba`
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)


def _find_mallctl():
    global _mallctl
    if _mallctl is None:
        # the process's malloc is jemalloc only when preloaded; a library that links its own copy
        # (prefixed symbols) is not what frees our tensors
        fn = getattr(ctypes.CDLL(None), "mallctl", None) if _preloaded() else None
        if fn is not None:
            fn.restype = ctypes.c_int
            fn.argtypes = [ctypes.c_char_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t]
        _mallctl = fn or False
    return _mallctl or None


def purge() -> bool:
    """Return the free pages of every jemalloc arena to the OS; False (and nothing done) under another malloc.

    For phase boundaries where memory should not accumulate (the chunked prefill); the next use of
    those pages page-faults them in again, once.
    """
    mallctl = _find_mallctl()
    if mallctl is None:
        return False
    return mallctl(f"arena.{_ALL_ARENAS}.purge".encode(), None, None, None, 0) == 0


def _decay(mallctl, name: str, new: int | None) -> int:
    """Read (and with `new`, set) a jemalloc decay time in ms: "arena.<i>.dirty_decay_ms", ..."""
    old, size = ctypes.c_ssize_t(), ctypes.c_size_t(ctypes.sizeof(ctypes.c_ssize_t))
    value = ctypes.c_ssize_t(new if new is not None else 0)
    newp, newlen = (ctypes.byref(value), ctypes.sizeof(value)) if new is not None else (None, 0)
    if mallctl(name.encode(), ctypes.byref(old), ctypes.byref(size), newp, newlen) != 0:
        raise OSError(f"jemalloc mallctl {name} failed")
    return old.value


@contextlib.contextmanager
def returning_freed_pages():
    """Inside the block jemalloc returns freed pages to the OS at once (every arena's decay times 0), as glibc
    does with large blocks; the decay times before are restored after. A no-op under another malloc.

    For phases whose transient memory would pile up with purging off: tokenizing a 256K-token
    passkey prompt twice peaked 232 MiB above the start under purging off, 94 MiB in this block
    (glibc: 156); see docs/probes.md, "Memory".
    """
    mallctl = _find_mallctl()
    if mallctl is None:
        yield
        return
    count, size = ctypes.c_uint(), ctypes.c_size_t(ctypes.sizeof(ctypes.c_uint))
    if mallctl(b"arenas.narenas", ctypes.byref(count), ctypes.byref(size), None, 0) != 0:
        raise OSError("jemalloc mallctl arenas.narenas failed")
    names = [f"arenas.{kind}_decay_ms" for kind in ("dirty", "muzzy")]  # the default of arenas made later
    names += [f"arena.{i}.{kind}_decay_ms" for i in range(count.value) for kind in ("dirty", "muzzy")]
    before = {}
    try:
        for name in names:
            with contextlib.suppress(OSError):  # an arena index not in use (never initialised) has no settings
                before[name] = _decay(mallctl, name, 0)
        purge()
        yield
    finally:
        for name, ms in before.items():
            _decay(mallctl, name, ms)


def describe() -> str:
    """One line for the start-up report."""
    if _preloaded():
        return f"jemalloc ({os.environ.get('MALLOC_CONF', 'its default MALLOC_CONF')})"
    if os.environ.get(OFF_VAR, "1") == "0":
        return f"the C library's malloc ({OFF_VAR}=0)"
    return (
        "the C library's malloc (libjemalloc2 not found: bash scripts/install.sh installs it; long segments page-fault)"
    )
