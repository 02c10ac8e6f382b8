"""The environment of a training task under Slurm: what the sbatch scripts used to compute in bash.

`stuffed-mamba fit` calls `apply_task_environment()` first; outside a Slurm task it does nothing.

- MASTER_ADDR: the first node's address (`NodeAddr` of `scontrol show node`). Lightning would
  rendezvous at the first node's *name*, which need not resolve on the compute nodes (DDP then
  retries for 30 minutes).
- MASTER_PORT = 20000 + job id mod 20000: a requeued job keeps its port, a neighbour's differs.
- OMP_NUM_THREADS = the task's CPUs; TORCH_NCCL_ASYNC_ERROR_HANDLING=1 (a rank that dies or hangs
  in a collective takes the job down instead of idling it); NCCL_DEBUG=WARN unless set.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable, Mapping, MutableMapping


def scontrol(*args: str) -> str:
    return subprocess.run(["scontrol", *args], capture_output=True, text=True, check=True, timeout=60).stdout


def first_node_address(nodelist: str, run: Callable[..., str] = scontrol) -> str:
    """The NodeAddr of the first node of a Slurm node list ("n[1-2]" -> n1's address)."""
    first = run("show", "hostnames", nodelist).split()[0]
    found = re.search(r"\bNodeAddr=(\S+)", run("show", "node", first))
    return found.group(1) if found else first


def task_environment(environ: Mapping[str, str], run: Callable[..., str] = scontrol) -> dict[str, str]:
    """The variables to set for one Slurm task (empty outside a job step)."""
    if "SLURM_JOB_ID" not in environ or "SLURM_PROCID" not in environ:
        return {}
    job_id = int(environ["SLURM_JOB_ID"])
    env = {
        "MASTER_ADDR": first_node_address(environ["SLURM_JOB_NODELIST"], run),
        "MASTER_PORT": str(20000 + job_id % 20000),
        "OMP_NUM_THREADS": environ.get("SLURM_CPUS_PER_TASK", "1"),
        "TORCH_NCCL_ASYNC_ERROR_HANDLING": "1",
        "NCCL_DEBUG": environ.get("NCCL_DEBUG", "WARN"),
    }
    return env


def apply_task_environment(
    environ: MutableMapping[str, str] = os.environ, run: Callable[..., str] = scontrol
) -> str | None:
    """Set `task_environment` in `environ`; a line for the log (None outside Slurm)."""
    env = task_environment(environ, run)
    if not env:
        return None
    environ.update(env)
    if environ is os.environ and "torch" in sys.modules:  # its OpenMP pool read OMP_NUM_THREADS at import
        sys.modules["torch"].set_num_threads(int(env["OMP_NUM_THREADS"]))
    return (
        f"job {environ['SLURM_JOB_ID']} restart {environ.get('SLURM_RESTART_COUNT', '0')} on "
        f"{environ.get('SLURM_JOB_NODELIST')}, rendezvous {env['MASTER_ADDR']}:{env['MASTER_PORT']}"
    )
