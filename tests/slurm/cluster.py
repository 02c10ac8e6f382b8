"""A private Slurm cluster on 127.0.0.1 for the tests: one munged, one slurmctld, two slurmd.

Two fake nodes (n1, n2) run on this one host, each slurmd on its own port, each with the
host's size as `slurmd -C` reports it and 8 fake GPUs, so the unmodified sbatch scripts' GPU
requests are accepted: gres.conf names `File=<dir>/gpu[0-7]`, symlinks to /dev/null (plain files
are counted too, but slurmd then logs "not a valid character device" and sets no
CUDA_VISIBLE_DEVICES; a `Count=` without `File=` leaves the nodes INVALID). Nothing touches the system's
Slurm or munge: the key, the munge socket, slurm.conf and all state live in one folder, and
clients find them through SLURM_CONF in `cluster.env`. Every daemon is our own child and is
stopped by its PID; job processes (which slurmd double-forks away from us) are found by the
SLURM_CONF in their environment and stopped by PID too.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from tests.helpers import free_port

SLURM_PACKAGES = ("slurmctld", "slurmd", "slurm-client", "munge")
DAEMONS = ("munged", "slurmctld", "slurmd", "sbatch", "scontrol", "squeue", "scancel")
FINAL_STATES = {
    "COMPLETED",
    "FAILED",
    "CANCELLED",
    "TIMEOUT",
    "NODE_FAIL",
    "OUT_OF_MEMORY",
    "BOOT_FAIL",
    "DEADLINE",
    "PREEMPTED",
}


PERIODIC_TIMEOUT = 30  # s between slurmctld's time-limit checks (a compile-time constant of Slurm)


class SlurmUnavailable(RuntimeError):
    """This machine cannot run a private Slurm cluster (the tests skip with this reason)."""


def ensure_installed() -> None:
    """apt-get the Debian packages when a binary is missing (what `scripts/install.sh dev` does)."""
    if all(shutil.which(d) for d in DAEMONS):
        return
    if os.geteuid() != 0:
        raise SlurmUnavailable("Slurm/munge are not installed and installing them needs root")
    if not shutil.which("apt-get"):
        raise SlurmUnavailable("Slurm/munge are not installed and there is no apt-get to install them")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for cmd in (
        ["apt-get", "update", "-qq"],
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *SLURM_PACKAGES],
    ):
        r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        if r.returncode != 0:
            raise SlurmUnavailable(f"{' '.join(cmd)} failed: {r.stderr.strip()[-300:]}")
    missing = [d for d in DAEMONS if not shutil.which(d)]
    if missing:
        raise SlurmUnavailable(f"still missing after apt-get: {', '.join(missing)}")


def _host_size() -> str:
    """`slurmd -C`'s CPUs/Boards/Sockets/Cores/Threads/RealMemory: a node declared bigger goes INVALID."""
    out = subprocess.run(["slurmd", "-C"], capture_output=True, text=True, check=True).stdout
    first = out.splitlines()[0].split()
    return " ".join(f for f in first if not f.startswith("NodeName="))


class SlurmCluster:
    def __init__(
        self,
        root: Path,
        nodes: tuple[str, ...] = ("n1", "n2"),
        gpus_per_node: int = 8,
        partition: str = "debug",
        node_size: str | None = None,
    ):
        """node_size: e.g. "CPUs=128 RealMemory=1000000" to declare nodes bigger than this host
        (slurmd then trusts slurm.conf: good for `sbatch --test-only`, not for running jobs);
        None declares what `slurmd -C` measures."""
        self.root = Path(root)
        self.nodes = nodes
        self.node_size = node_size
        self.gpus_per_node = gpus_per_node
        self.partition = partition
        self.conf = self.root / "etc" / "slurm.conf"
        self.munge_socket = self.root / "munge" / "sock"
        self.procs: dict[str, subprocess.Popen] = {}
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
        self.env["SLURM_CONF"] = str(self.conf)
        # the project's Python first: sbatch exports this environment to the jobs, and the
        # `stuffed-mamba` next to sys.executable is the one installed for this interpreter
        self.env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + self.env.get("PATH", "")

    # ---------------------------------------------------------------- start / stop
    def start(self, timeout: float = 30.0) -> SlurmCluster:
        if len(str(self.munge_socket)) > 100:
            raise SlurmUnavailable(f"munge socket path too long for AF_UNIX: {self.munge_socket}")
        for d in ("etc", "munge", "state", "log", "run", "gpu", "tmp", *(f"spool/{n}" for n in self.nodes)):
            (self.root / d).mkdir(parents=True, exist_ok=True)
        os.chmod(self.root / "munge", 0o700)
        try:
            self._start_munge()
            self._write_config()
            self._start_controller(timeout)
            for n in self.nodes:
                self._spawn(
                    f"slurmd-{n}",
                    ["slurmd", "-D", "-N", n, "-f", str(self.conf), "-L", str(self.root / "log" / f"slurmd-{n}.log")],
                )
            self._wait(self._nodes_idle, timeout, "nodes did not become idle")
        except BaseException:
            self.stop()
            raise
        return self

    def _start_controller(self, timeout: float = 30.0) -> None:
        self._spawn(
            "slurmctld", ["slurmctld", "-D", "-f", str(self.conf), "-L", str(self.root / "log" / "slurmctld.log")]
        )
        self._wait(
            lambda: self._run(["scontrol", "ping"], check=False).returncode == 0,
            timeout,
            "slurmctld did not answer `scontrol ping`",
        )

    def restart_controller(self) -> float:
        """Stop slurmctld (it saves its state) and start it again; jobs carry on. Returns the
        time.time() of the start: slurmctld checks time limits (and sends `--signal=SIG@N`
        warnings that are due) every PERIODIC_TIMEOUT s counted from its start, so after a
        restart the next check is known to the second."""
        p = self.procs.pop("slurmctld")
        p.terminate()
        p.wait(30)
        t = time.time()
        self._start_controller()
        return t

    def _start_munge(self) -> None:
        key = self.root / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        os.chmod(key, 0o400)
        m = self.root / "munge"
        # -f: munged refuses group/world-writable ancestors such as /tmp without it
        self._spawn(
            "munged",
            [
                "munged",
                "-F",
                "-f",
                f"--socket={self.munge_socket}",
                f"--key-file={key}",
                f"--log-file={m / 'munged.log'}",
                f"--pid-file={m / 'munged.pid'}",
                f"--seed-file={m / 'munged.seed'}",
            ],
        )
        self._wait(self.munge_socket.exists, 10, "munged did not create its socket")

    def _write_config(self) -> None:
        host = socket.gethostname().split(".")[0]
        size = self.node_size or _host_size()
        overrides = "SlurmdParameters=config_overrides\n" if self.node_size else ""
        for i in range(self.gpus_per_node):
            (self.root / "gpu" / f"gpu{i}").symlink_to("/dev/null")
        r = self.root
        # job ids (and with them the scripts' MASTER_PORT) differ between clusters on one host
        node_lines = "\n".join(
            f"NodeName={n} NodeHostname={host} NodeAddr=127.0.0.1 Port={free_port()} {size} "
            f"Gres=gpu:{self.gpus_per_node} State=UNKNOWN"
            for n in self.nodes
        )
        self.conf.write_text(f"""\
ClusterName=smtest
FirstJobId={random.SystemRandom().randrange(1000, 900000)}
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={self.munge_socket}
CredType=cred/munge
StateSaveLocation={r / "state"}
SlurmdSpoolDir={r / "spool"}/%n
SlurmctldPidFile={r / "run"}/slurmctld.pid
SlurmdPidFile={r / "run"}/slurmd-%n.pid
SlurmctldLogFile={r / "log"}/slurmctld.log
SlurmdLogFile={r / "log"}/slurmd-%n.log
PlugStackConfig={r / "etc"}/plugstack.conf
TmpFS={r / "tmp"}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/builtin
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
ReturnToService=2
KillWait=5
MinJobAge=600
GresTypes=gpu
{overrides}{node_lines}
PartitionName={self.partition} Nodes={",".join(self.nodes)} Default=YES MaxTime=INFINITE State=UP
""")
        (r / "etc" / "plugstack.conf").write_text("")
        (r / "etc" / "gres.conf").write_text(
            f"AutoDetect=off\nNodeName={','.join(self.nodes)} Name=gpu File={r / 'gpu'}/gpu[0-{self.gpus_per_node - 1}]\n"
        )

    def stop(self) -> None:
        """Cancel every job, stop job processes and daemons by PID (never by name)."""
        if "slurmctld" in self.procs and self.procs["slurmctld"].poll() is None:
            self._run(["scancel", "--full", f"--partition={self.partition}"], check=False)
            deadline = time.monotonic() + 10
            while (
                time.monotonic() < deadline and self._run(["squeue", "-h", "-t", "R,CG,PD"], check=False).stdout.strip()
            ):
                time.sleep(0.5)
        for name in reversed(list(self.procs)):  # slurmd, slurmctld, then munged
            p = self.procs[name]
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(5)
        self.procs.clear()
        # left-overs: a job step that ignored SIGTERM, or slurmctld's slurmscriptd
        for pid in self._job_pids():
            _kill(pid, signal.SIGKILL)

    def _job_pids(self) -> list[int]:
        """slurmstepd and job processes of this cluster: they carry our SLURM_CONF, which no other does."""
        mark = f"SLURM_CONF={self.conf}".encode()
        own = {os.getpid(), *(p.pid for p in self.procs.values())}
        pids = []
        for d in Path("/proc").iterdir():
            if not d.name.isdigit() or int(d.name) in own:
                continue
            try:
                env = (d / "environ").read_bytes()
            except OSError:
                continue
            if mark in env.split(b"\0"):
                pids.append(int(d.name))
        return pids

    # ---------------------------------------------------------------- helpers
    def _spawn(self, name: str, cmd: list[str]) -> None:
        # the child keeps its own descriptor of the log; ours can close at once
        with open(self.root / "log" / f"{name}.stdout", "wb") as log:
            self.procs[name] = subprocess.Popen(
                cmd,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )

    def _wait(self, cond, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            dead = [n for n, p in self.procs.items() if p.poll() is not None]
            if dead:
                raise RuntimeError(f"{what}: {', '.join(dead)} exited\n{self.logs()}")
            if cond():
                return
            time.sleep(0.2)
        raise RuntimeError(f"{what} within {timeout:.0f} s\n{self.logs()}")

    def _nodes_idle(self) -> bool:
        out = self._run(["sinfo", "-h", "-N", "-o", "%N %t"], check=False).stdout.split("\n")
        states = dict(line.split() for line in out if line.strip())
        return all(states.get(n) == "idle" for n in self.nodes)

    def _run(self, cmd: list[str], check: bool = True, **kw) -> subprocess.CompletedProcess:
        kw.setdefault("env", self.env)
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=60, **kw)
        if check and r.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} -> {r.returncode}: {r.stderr.strip()}")
        return r

    def logs(self, tail: int = 30) -> str:
        parts = []
        for f in sorted((self.root / "log").glob("*")) + [self.root / "munge" / "munged.log"]:
            if f.is_file():
                lines = f.read_text(errors="replace").splitlines()[-tail:]
                parts.append(f"--- {f.name}\n" + "\n".join(lines))
        return "\n".join(parts)

    # ---------------------------------------------------------------- jobs
    def sbatch(
        self,
        script: str | Path,
        *args: str,
        options: tuple[str, ...] = (),
        cwd: str | Path | None = None,
        env: dict | None = None,
    ) -> int:
        """Submit `script args...` with extra sbatch `options`; returns the job id."""
        r = self._run(["sbatch", "--parsable", *options, str(script), *args], cwd=cwd, env={**self.env, **(env or {})})
        return int(r.stdout.strip().split(";")[0])

    def job(self, job_id: int) -> dict[str, str]:
        """`scontrol show job` as a dict (JobState, Restarts, BatchHost, ...)."""
        out = self._run(["scontrol", "-o", "show", "job", str(job_id)]).stdout
        return dict(re.findall(r"(\w[\w:/]*)=(\S*)", out))

    def wait(
        self, job_id: int, until=lambda j: j["JobState"] in FINAL_STATES, timeout: float = 120.0, poll: float = 0.5
    ) -> dict[str, str]:
        """Poll `scontrol show job` (not `sbatch --wait`, which backs off up to 32 s) until `until(job)`."""
        deadline = time.monotonic() + timeout
        while True:
            j = self.job(job_id)
            if until(j):
                return j
            if j["JobState"] in FINAL_STATES:
                raise RuntimeError(
                    f"job {job_id} ended {j['JobState']} (ExitCode={j.get('ExitCode')}, "
                    f"Restarts={j.get('Restarts')}) before the awaited state"
                )
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"job {job_id} still {j.get('JobState')} after {timeout:.0f} s "
                    f"(Reason={j.get('Reason')})\n{self.logs()}"
                )
            time.sleep(poll)

    def scontrol(self, *args: str) -> str:
        return self._run(["scontrol", *args]).stdout


def _kill(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)
