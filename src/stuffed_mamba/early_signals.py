"""Slurm's warning signal while a rank is still starting.

`#SBATCH --signal=USR1@90` (or `scancel --signal=USR1`) can reach a task before `fit` has installed
its checkpoint-and-requeue handler: Python, torch and Lightning take seconds to import, more on a
loaded node, and USR1's default action ends the process: one rank died and the job failed instead
of requeueing (seen in the Slurm test at load ~6). The console command installs this recorder
first; `RequeueOnSignal` takes the signal over later and honours one that arrived in between (it
checkpoints at the first episode boundary and requeues).

The re-execution under jemalloc (allocator.py) replaces the process image, which resets handlers
but keeps the blocked-signal mask: the signal is blocked across the exec (it stays pending) and one
already recorded is handed over in the environment. Standard library only: this runs before any
heavy import.
"""

from __future__ import annotations

import os
import signal

_ENV = "_STUFFED_MAMBA_EARLY_SIGNALS"  # signals recorded before a re-execution, "10,12"
_received: set[int] = set()


def _record(signum, frame) -> None:
    _received.add(signum)


def catch(signum: int = signal.SIGUSR1) -> None:
    """Record `signum` instead of dying of it, until a real handler replaces this one."""
    _received.update(int(s) for s in os.environ.pop(_ENV, "").split(",") if s)
    signal.signal(signum, _record)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signum})  # pending since a re-execution: delivered now


def received(signum: int) -> bool:
    """Whether `signum` arrived while the recorder was installed (in this process or before its exec)."""
    return signum in _received


def hold_across_exec(env: dict[str, str], signum: int = signal.SIGUSR1) -> None:
    """Before `os.execve(..., env)`: block `signum` if recorded here, and hand over what was received."""
    if signal.getsignal(signum) is _record:
        signal.pthread_sigmask(signal.SIG_BLOCK, {signum})
    if _received:
        env[_ENV] = ",".join(str(s) for s in sorted(_received))


def release(signum: int = signal.SIGUSR1) -> None:
    """The default action again, for commands that have no use for the signal."""
    if signal.getsignal(signum) is _record:
        signal.signal(signum, signal.SIG_DFL)
