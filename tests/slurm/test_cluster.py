"""The harness itself: a 2-node job runs one task per fake node and sees its fake GPUs."""

import pytest

pytestmark = pytest.mark.slurm


def test_two_node_job_runs_one_task_per_node_with_fake_gpus(slurm_cluster, tmp_path):
    script = tmp_path / "hello.sh"
    script.write_text(
        "#!/bin/bash\nsrun bash -c 'echo \"$SLURM_PROCID $SLURMD_NODENAME gpus=$CUDA_VISIBLE_DEVICES\"'\n"
    )
    out = tmp_path / "out.txt"
    job_id = slurm_cluster.sbatch(
        script, options=("--nodes=2", "--ntasks-per-node=1", "--gpus-per-node=8", f"--output={out}"), cwd=tmp_path
    )
    job = slurm_cluster.wait(job_id, timeout=60)
    assert job["JobState"] == "COMPLETED", out.read_text() if out.exists() else job
    assert job["NodeList"] == "n[1-2]"
    lines = sorted(out.read_text().split("\n"))[1:]
    assert lines == ["0 n1 gpus=0,1,2,3,4,5,6,7", "1 n2 gpus=0,1,2,3,4,5,6,7"]


def test_node_sizes_come_from_slurmd_C(slurm_cluster):
    """A node declared bigger than `slurmd -C` goes INVALID; ours must be idle with the host's CPUs."""
    import os

    node = slurm_cluster.scontrol("-o", "show", "node", "n1")
    assert "State=IDLE" in node
    assert f"CPUTot={os.cpu_count()}" in node
