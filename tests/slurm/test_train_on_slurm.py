"""The unmodified `slurm/train_370m_256k.sh` on the private two-node cluster, with the tiny CPU
recipe: DDP over gloo across n1 and n2 (one rank per fake node), then the same run preempted
twice -- by the script's own `--signal=USR1@90` under a short `--time`, and by
`scancel --signal=USR1` -- requeued, resumed, and finished with weights and optimiser state
bit-identical to the uninterrupted run and no episode trained twice.

Timing the `@90` warning: slurmctld checks time limits every 30 s, counted from its start,
and sends the warning at the first check with `now + 30 s >= end - 90 s`; with `--time=2`
that is the first check after the job starts. The test restarts slurmctld (running jobs
carry on) to know when its checks fall, and submits so that the check comes a few seconds
after the ranks have installed their handler (as long after the start as the reference run
needed to initialise DDP, plus a margin), while they are training. A requeued job waits
~120 s (BeginTime): the test releases it with `StartTime=now+2` (not `now`: slurmd refuses, as
"Job credential revoked", a launch whose credential dates from the second of the requeue; seen once
in three runs, the job then ends FAILED without output).
"""

import time
from pathlib import Path

import pytest
import torch

from tests.slurm.cluster import PERIODIC_TIMEOUT
from tests.slurm.test_scripts import REPO

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

SCRIPT = REPO / "slurm" / "train_370m_256k.sh"
RECIPE = "recipes/tiny_cpu.yaml"  # relative: the job runs in the repository root, as a user's would
# what a CPU run takes away from the script's GPU resources (the script itself is unmodified)
CPU_FIT = ("--nodes=2", "--ntasks-per-node=1", "--cpus-per-task=1")
STEPS = 800  # optimiser steps of the whole run
CKPT_EVERY = 50
RELEASE = "StartTime=now+2"  # a requeued job's release: see the module docstring


def overrides(run_dir: Path) -> list[str]:
    return [
        # CPU and DDP across the two fake nodes
        "trainer.accelerator=cpu",
        "trainer.strategy=ddp",
        "trainer.num_nodes=2",
        "trainer.devices=1",
        "trainer.precision=32-true",
        "trainer.enable_progress_bar=false",
        # small enough that the three runs and the reference fit CI's budget on two shared cores
        "model.d_model=64",
        "model.n_layer=2",
        "model.d_state=16",
        "model.headdim=16",
        "model.chunk_size=32",
        "data.train_length=64",
        "data.segments=2",
        "data.batch_size=1",
        "probes.enabled=false",
        f"trainer.max_steps={STEPS}",
        f"optim.total_steps={STEPS}",
        "optim.warmup_steps=10",
        f"run.dir={run_dir}",
        "run.resume=auto",
        f"run.checkpoint_every_n_steps={CKPT_EVERY}",
    ]


def submit(cluster, run_dir: Path, out: Path, *options: str) -> int:
    return cluster.sbatch(
        SCRIPT, *overrides(run_dir), options=(*CPU_FIT, f"--output={out}", *options), cwd=REPO, env={"RECIPE": RECIPE}
    )


def load(ckpt: Path) -> dict:
    return torch.load(ckpt, map_location="cpu", weights_only=False)


def ckpt_step(run_dir: Path) -> int | None:
    last = run_dir / "checkpoints" / "last.ckpt"
    return load(last)["global_step"] if last.exists() else None


def wait_for(cond, timeout: float, what: str, out: Path):
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} after {timeout:.0f} s\n" + (out.read_text()[-4000:] if out.exists() else ""))
        time.sleep(0.5)


def logged_episodes(run_dir: Path) -> list[int]:
    """`train/episodes` values of every TensorBoard event file of the run, in file order."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    values = []
    for f in sorted((run_dir / "tensorboard").glob("events.out.tfevents.*")):
        for ev in EventFileLoader(str(f)).Load():
            for v in ev.summary.value:
                if v.tag == "train/episodes":
                    values.append(round(v.tensor.float_val[0] if v.HasField("tensor") else v.simple_value))
    return values


def wait_until_running(cluster, job_id: int, out: Path, restarts: int) -> tuple[float, float]:
    """time.time() when the job (its `restarts`-th run) was seen RUNNING, and when both ranks had
    initialised DDP (by then each has installed its USR1 handler, which comes first in `fit`)."""
    cluster.wait(
        job_id, until=lambda j: j["JobState"] == "RUNNING" and j["Restarts"] == str(restarts), timeout=120, poll=0.1
    )
    t_start = time.time()
    n = 2 * (restarts + 1)
    wait_for(
        lambda: out.exists() and out.read_text().count("Initializing distributed: GLOBAL_RANK") >= n,
        180,
        f"run {restarts} did not initialise DDP",
        out,
    )
    return t_start, time.time()


@pytest.fixture(scope="module")
def reference(slurm_cluster, tmp_path_factory):
    d = tmp_path_factory.mktemp("reference")
    out = d / "job.out"
    job_id = submit(slurm_cluster, d / "run", out)
    t_start, t_ddp = wait_until_running(slurm_cluster, job_id, out, restarts=0)
    job = slurm_cluster.wait(job_id, timeout=240)
    return d / "run", job, out, t_ddp - t_start


def test_ddp_across_two_fake_nodes_completes_with_last_ckpt(reference):
    run_dir, job, out, _ = reference
    text = out.read_text()
    assert job["JobState"] == "COMPLETED", text[-4000:]
    assert job["NodeList"] == "n[1-2]" and job["Restarts"] == "0"
    # one Lightning rank per node (one task per node), both in one process group
    assert "GLOBAL_RANK: 0, MEMBER: 1/2" in text and "GLOBAL_RANK: 1, MEMBER: 2/2" in text
    ckpt = load(run_dir / "checkpoints" / "last.ckpt")
    assert ckpt["global_step"] == STEPS


def test_preempted_twice_resumes_bit_identical(slurm_cluster, reference, tmp_path):
    ref_dir, ref_job, _, ddp_after = reference
    assert ref_job["JobState"] == "COMPLETED"
    run_dir, out = tmp_path / "run", tmp_path / "job.out"

    # 1. --signal=USR1@90 (the script's) with --time=2: due at the first time-limit check after
    #    the start. Start the job so that check comes ddp_after + 5 s into it.
    restarted = slurm_cluster.restart_controller()
    delay = ddp_after + 5
    submit_at = restarted + PERIODIC_TIMEOUT - delay - 1  # sbatch -> running takes about a second
    while submit_at < time.time():
        submit_at += PERIODIC_TIMEOUT
    time.sleep(submit_at - time.time())
    job_id = submit(slurm_cluster, run_dir, out, "--time=2")
    t_start, t_ddp = wait_until_running(slurm_cluster, job_id, out, restarts=0)
    job = slurm_cluster.wait(job_id, until=lambda j: j["Restarts"] == "1" and j["JobState"] == "PENDING", timeout=150)
    step_1 = ckpt_step(run_dir)
    # the short limit stays with the job: give the next run its ten minutes back, and release it
    slurm_cluster.scontrol("update", f"JobId={job_id}", "TimeLimit=10", RELEASE)

    # 2. scancel --signal=USR1 as soon as the resumed ranks are up
    wait_until_running(slurm_cluster, job_id, out, restarts=1)
    slurm_cluster._run(["scancel", "--signal=USR1", str(job_id)])
    job = slurm_cluster.wait(job_id, until=lambda j: j["Restarts"] == "2" and j["JobState"] == "PENDING", timeout=120)
    step_2 = ckpt_step(run_dir)
    slurm_cluster.scontrol("update", f"JobId={job_id}", RELEASE)

    job = slurm_cluster.wait(job_id, timeout=240)
    text = out.read_text()
    assert job["JobState"] == "COMPLETED" and job["Restarts"] == "2", text[-4000:]
    assert 0 < step_1 < step_2 < STEPS, (step_1, step_2)
    assert text.count("Restoring states from the checkpoint path") == 2
    assert text.count(f"requeued job {job_id}") == 2

    # same final step, bit-identical weights and optimiser state
    ref, got = load(ref_dir / "checkpoints" / "last.ckpt"), load(run_dir / "checkpoints" / "last.ckpt")
    assert got["global_step"] == ref["global_step"] == STEPS
    assert ref["state_dict"].keys() == got["state_dict"].keys()
    differ = [k for k in ref["state_dict"] if not torch.equal(ref["state_dict"][k], got["state_dict"][k])]
    assert not differ, f"weights differ from the uninterrupted run: {differ}"
    for a, b in zip(
        ref["optimizer_states"][0]["state"].values(), got["optimizer_states"][0]["state"].values(), strict=True
    ):
        assert all(torch.equal(a[k], b[k]) for k in a), "optimiser state differs from the uninterrupted run"

    # no episode trained twice (or skipped): each is logged exactly once across the three runs
    episodes = logged_episodes(run_dir)
    assert episodes == list(range(1, len(episodes) + 1)), episodes
    assert episodes == logged_episodes(ref_dir)
