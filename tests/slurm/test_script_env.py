"""What the unmodified train script hands to each rank, with a stub `stuffed-mamba` in a fake
environment (STUFFED_MAMBA_ENV): one rank per node, the rendezvous address from Slurm, the
recipe and overrides passed through untouched, and a batch shell that survives USR1."""

import sys
import time

import pytest

from tests.slurm.test_scripts import REPO

pytestmark = pytest.mark.slurm
SCRIPT = REPO / "slurm" / "train_370m_256k.sh"
# what the CPU tests take away from the GPU resources in the script
CPU_FIT = ("--nodes=2", "--ntasks-per-node=1", "--cpus-per-task=1")


def fake_env(tmp_path, body: str, shebang: str = "/bin/bash"):
    bin_ = tmp_path / "env" / "bin"
    bin_.mkdir(parents=True)
    stub = bin_ / "stuffed-mamba"
    stub.write_text(f"#!{shebang}\n" + body)
    stub.chmod(0o755)
    return {"STUFFED_MAMBA_ENV": str(tmp_path / "env")}


# a stub `stuffed-mamba` that sets the task environment as `fit` does, then reports it
REPORT = """import os, sys
from stuffed_mamba.training.slurm_env import apply_task_environment
apply_task_environment()
e = os.environ
print(f"rank={e['SLURM_PROCID']} node={e['SLURMD_NODENAME']} addr={e['MASTER_ADDR']} port={e['MASTER_PORT']} "
      f"threads={e['OMP_NUM_THREADS']} argc={len(sys.argv) - 1} args={' '.join(sys.argv[1:])}", flush=True)
"""


def test_ranks_get_slurm_address_recipe_and_overrides(slurm_cluster, tmp_path):
    env = fake_env(tmp_path, REPORT, shebang=sys.executable)
    out = tmp_path / "default.out"
    jid = slurm_cluster.sbatch(SCRIPT, "a.b=1", "c=x y", options=(*CPU_FIT, f"--output={out}"), cwd=tmp_path, env=env)
    assert slurm_cluster.wait(jid, timeout=60)["JobState"] == "COMPLETED", out.read_text()
    ranks = sorted(ln for ln in out.read_text().splitlines() if ln.startswith("rank="))
    port = 20000 + jid % 20000
    assert ranks == [
        f"rank={r} node=n{r + 1} addr=127.0.0.1 port={port} threads=1 argc=4 "
        f"args=fit recipes/mamba2_370m_256k.yaml a.b=1 c=x y"
        for r in (0, 1)
    ]

    out = tmp_path / "recipe.out"
    jid = slurm_cluster.sbatch(
        SCRIPT, options=(*CPU_FIT, f"--output={out}"), cwd=tmp_path, env={**env, "RECIPE": "recipes/tiny_cpu.yaml"}
    )
    assert slurm_cluster.wait(jid, timeout=60)["JobState"] == "COMPLETED", out.read_text()
    assert out.read_text().count("argc=2 args=fit recipes/tiny_cpu.yaml\n") == 2


def test_missing_environment_is_a_clear_error(slurm_cluster, tmp_path):
    out = tmp_path / "noenv.out"
    env = {"STUFFED_MAMBA_ENV": str(tmp_path / "nowhere"), "PATH": "/usr/bin:/bin"}
    jid = slurm_cluster.sbatch(SCRIPT, options=(*CPU_FIT, f"--output={out}"), cwd=tmp_path, env=env)
    job = slurm_cluster.wait(jid, timeout=60)
    assert job["JobState"] == "FAILED" and job["ExitCode"] == "2:0"
    assert "stuffed-mamba is not on PATH" in out.read_text()


def test_usr1_reaches_ranks_and_batch_shell_survives(slurm_cluster, tmp_path):
    """`scancel --signal=USR1 --full` signals the batch shell too: the script's trap keeps it alive."""
    env = fake_env(
        tmp_path,
        "trap 'echo \"rank $SLURM_PROCID got USR1\"; exit 0' USR1\n"
        'echo "rank $SLURM_PROCID ready"\n'
        "for i in $(seq 600); do sleep 0.1; done\n",
    )
    out = tmp_path / "usr1.out"
    jid = slurm_cluster.sbatch(SCRIPT, options=(*CPU_FIT, f"--output={out}"), cwd=tmp_path, env=env)
    deadline = time.monotonic() + 60
    while not (out.exists() and out.read_text().count(" ready") == 2):
        assert time.monotonic() < deadline, out.read_text() if out.exists() else "no output"
        time.sleep(0.2)
    slurm_cluster._run(["scancel", "--signal=USR1", "--full", str(jid)])
    job = slurm_cluster.wait(jid, timeout=30)
    text = out.read_text()
    assert job["JobState"] == "COMPLETED", text
    assert "batch shell: got USR1" in text
    assert "rank 0 got USR1" in text and "rank 1 got USR1" in text
