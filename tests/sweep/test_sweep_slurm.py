"""slurm/sweep_forget_threshold.sh: one array task per sweep cell, the task id passed as --cell."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "slurm" / "sweep_forget_threshold.sh"


def stub_env(tmp_path: Path) -> Path:
    """An environment whose `stuffed-mamba` prints its task id and arguments."""
    bin_ = tmp_path / "env" / "bin"
    bin_.mkdir(parents=True)
    stub = bin_ / "stuffed-mamba"
    stub.write_text('#!/bin/bash\necho "task=$SLURM_ARRAY_TASK_ID threads=$OMP_NUM_THREADS args=$*"\n')
    stub.chmod(0o755)
    return tmp_path / "env"


def test_script_passes_the_array_task_as_the_cell(tmp_path):
    env_dir = stub_env(tmp_path)
    # outside Slurm: `srun` is a pass-through, the array variables are set by hand
    srun = env_dir / "bin" / "srun"
    srun.write_text('#!/bin/bash\nwhile [[ "$1" == --* ]]; do shift; done\nexec "$@"\n')
    srun.chmod(0o755)
    env = {
        "PATH": f"{env_dir}/bin:/usr/bin:/bin",
        "STUFFED_MAMBA_ENV": str(env_dir),
        "SLURM_ARRAY_TASK_ID": "7",
        "SLURM_ARRAY_JOB_ID": "1",
        "SLURM_CPUS_PER_TASK": "2",
    }
    r = subprocess.run(["bash", str(SCRIPT), "out_dir=x"], env=env, capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[-1] == (
        "task=7 threads=2 args=analyze sweep recipes/sweeps/forget_threshold_cpu.yaml --cell 7 out_dir=x"
    )
    r = subprocess.run(["bash", str(SCRIPT)], env={**env, "RECIPE": "my.yaml"}, capture_output=True, text=True)
    assert r.stdout.splitlines()[-1].endswith("args=analyze sweep my.yaml --cell 7")
    del env["SLURM_ARRAY_TASK_ID"]
    r = subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and "sbatch --array" in r.stderr


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    from tests.slurm.cluster import SlurmCluster, SlurmUnavailable, ensure_installed

    if not sys.platform.startswith("linux") or os.geteuid() != 0:
        pytest.skip("the private Slurm cluster needs Linux and root")
    try:
        ensure_installed()
    except SlurmUnavailable as e:
        pytest.skip(str(e))
    c = SlurmCluster(tmp_path_factory.mktemp("sweep_slurm"), nodes=("n1",)).start()
    yield c
    c.stop()


@pytest.mark.slurm
def test_array_job_runs_one_cell_per_task(cluster, tmp_path):
    env_dir = stub_env(tmp_path)
    cluster.sbatch(
        SCRIPT,
        "out_dir=y",
        options=("--array=0-2", "--cpus-per-task=1", "--time=5", f"--output={tmp_path}/t_%a.out"),
        cwd=REPO,
        env={"STUFFED_MAMBA_ENV": str(env_dir)},
    )
    outs = [tmp_path / f"t_{i}.out" for i in range(3)]
    deadline = time.monotonic() + 90
    while not all(o.exists() and "args=" in o.read_text() for o in outs):
        assert time.monotonic() < deadline, [o.read_text() if o.exists() else None for o in outs]
        time.sleep(0.5)
    for i, o in enumerate(outs):
        assert (
            f"task={i} threads=1 args=analyze sweep recipes/sweeps/forget_threshold_cpu.yaml --cell {i} out_dir=y"
        ) in o.read_text()
