"""The Slurm task environment, computed in Python (the sbatch scripts only submit): rendezvous
address from the first node's NodeAddr, port from the job id, threads from the task's CPUs."""

from stuffed_mamba.training.slurm_env import apply_task_environment, task_environment

SCONTROL = {
    ("show", "hostnames", "gpu[07-08]"): "gpu07\ngpu08\n",
    (
        "show",
        "node",
        "gpu07",
    ): "NodeName=gpu07 Arch=x86_64 CoresPerSocket=32\n   NodeAddr=10.1.2.7 NodeHostName=gpu07\n",
}


def fake_scontrol(*args):
    return SCONTROL[args]


def test_a_task_gets_the_first_nodes_address_and_a_port_from_the_job():
    environ = {
        "SLURM_JOB_ID": "123456",
        "SLURM_PROCID": "3",
        "SLURM_JOB_NODELIST": "gpu[07-08]",
        "SLURM_CPUS_PER_TASK": "8",
        "NCCL_DEBUG": "INFO",
    }
    env = task_environment(environ, fake_scontrol)
    assert env == {
        "MASTER_ADDR": "10.1.2.7",
        "MASTER_PORT": str(20000 + 123456 % 20000),
        "OMP_NUM_THREADS": "8",
        "TORCH_NCCL_ASYNC_ERROR_HANDLING": "1",
        "NCCL_DEBUG": "INFO",
    }
    line = apply_task_environment(environ, fake_scontrol)
    assert environ["MASTER_ADDR"] == "10.1.2.7" and "rendezvous 10.1.2.7:23456" in line


def test_outside_a_slurm_task_nothing_changes():
    environ = {"SLURM_JOB_ID": "5"}  # the batch shell of a job, not one of its tasks
    assert apply_task_environment(environ, fake_scontrol) is None and environ == {"SLURM_JOB_ID": "5"}
    assert task_environment({}, fake_scontrol) == {}


def test_the_thread_count_reaches_an_already_imported_torch(monkeypatch):
    """fit imports torch (through the recipe's model config) before it applies the environment, and
    OpenMP reads OMP_NUM_THREADS only once: the task's CPU count must be set in torch as well."""
    import os
    import sys
    from types import SimpleNamespace

    threads = []
    monkeypatch.setitem(sys.modules, "torch", SimpleNamespace(set_num_threads=threads.append))
    for key in ("MASTER_ADDR", "MASTER_PORT", "OMP_NUM_THREADS", "TORCH_NCCL_ASYNC_ERROR_HANDLING", "NCCL_DEBUG"):
        monkeypatch.delenv(key, raising=False)  # restored after the test
    for key, value in {
        "SLURM_JOB_ID": "7",
        "SLURM_PROCID": "0",
        "SLURM_JOB_NODELIST": "gpu[07-08]",
        "SLURM_CPUS_PER_TASK": "3",
    }.items():
        monkeypatch.setenv(key, value)
    apply_task_environment(os.environ, fake_scontrol)
    assert threads == [3] and os.environ["OMP_NUM_THREADS"] == "3"
