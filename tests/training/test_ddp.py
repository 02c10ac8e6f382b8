"""DDP on the CPU, 2 processes over gloo, through the real entry point and data pipeline: trains,
each rank reads its own shards and keeps its own data position, one checkpoint is written."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from stuffed_mamba.data import build_dataloader
from stuffed_mamba.data.dataset import EpisodeDataset

from stuffed_mamba.training.config import load_recipe
from tests.training.common import TINY_MODEL, load_ckpt

S = 3
OVERRIDES = [
    *(f"model.{k}={v}" for k, v in TINY_MODEL.items() if k != "vocab_size"),
    "data.min_doc_tokens=1024",
    f"data.segments={S}",
    "data.train_length=32",
    "data.batch_size=2",
    "optim.total_steps=60",
    "optim.warmup_steps=3",
    "probes.enabled=false",
    "trainer.strategy=ddp",
    "trainer.devices=2",
    "trainer.accelerator=cpu",
    "trainer.enable_progress_bar=false",
]


def fit_cli(run_dir, *extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "LOCAL_RANK", "WORLD_SIZE", "RANK"))}
    env["OMP_NUM_THREADS"] = "1"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "stuffed_mamba",
            "fit",
            "recipes/tiny_cpu.yaml",
            *OVERRIDES,
            f"run.dir={run_dir}",
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    return r


def test_ddp_two_processes(tmp_path):
    r = fit_cli(tmp_path, "trainer.max_steps=6")
    assert "done: 6 optimiser steps, 2 episodes" in r.stdout
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["last.ckpt"]  # one checkpoint, rank 0's file
    ckpt = load_ckpt(tmp_path / "checkpoints/last.ckpt")
    assert ckpt["world_size"] == 2 and ckpt["global_step"] == 6
    # each rank's own data position was gathered, not rank 0's twice
    states = ckpt["data_state_per_rank"]
    assert len(states) == 2

    cfg = load_recipe("recipes/tiny_cpu.yaml", [*OVERRIDES, f"run.dir={tmp_path}"]).data
    # ranks own disjoint shards
    shards = []
    for rank in range(2):
        ds = EpisodeDataset(cfg, rank=rank, world_size=2)
        shards.append({t for lane in ds.lane_ids(0) for t in ds.lanes[lane]})
    assert shards[0] and shards[1] and not shards[0] & shards[1]
    # each saved state is where that rank's stream stands after 2 episodes: restoring it gives the
    # 3rd episode of a fresh loader of the same rank, and the two ranks' episodes differ
    nxt = []
    for rank in range(2):
        fresh = iter(build_dataloader(cfg, rank=rank, world_size=2))
        expected = [next(fresh) for _ in range(3)][2]
        restored = build_dataloader(cfg, rank=rank, world_size=2)
        restored.load_state_dict(states[rank])
        got = next(iter(restored))
        assert torch.equal(got, expected), rank
        nxt.append(got)
    assert not torch.equal(nxt[0], nxt[1])


@pytest.mark.slow
@pytest.mark.extended(
    "2-rank DDP resumes bit-exact in CI in test_initial_state's passed case and the Slurm preemption test"
)
def test_ddp_resume_is_bit_exact(tmp_path):
    fit_cli(tmp_path / "straight", "trainer.max_steps=12")
    fit_cli(tmp_path / "split", "trainer.max_steps=6")
    fit_cli(tmp_path / "split", "trainer.max_steps=12", "run.resume=auto")
    a, b = load_ckpt(tmp_path / "straight/checkpoints/last.ckpt"), load_ckpt(tmp_path / "split/checkpoints/last.ckpt")
    for k in a["state_dict"]:
        assert torch.equal(a["state_dict"][k], b["state_dict"][k]), k


def test_usr1_on_one_rank_stops_both_at_the_same_boundary(tmp_path):
    """The flag of rank 1 alone reaches rank 0 (all-reduce MAX): both save last.ckpt together at an
    episode boundary, rank 0 alone runs `scontrol requeue`, both stop; no deadlock."""
    import signal
    import time

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "scontrol.log"
    (bin_dir / "scontrol").write_text(f'#!/bin/sh\necho "$@" >> {log}\n')
    (bin_dir / "scontrol").chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "LOCAL_RANK", "WORLD_SIZE", "RANK"))}
    env.update(OMP_NUM_THREADS="1", SLURM_JOB_ID="777", PATH=f"{bin_dir}:{env['PATH']}")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "stuffed_mamba",
            "fit",
            "recipes/tiny_cpu.yaml",
            *OVERRIDES,
            f"run.dir={tmp_path / 'run'}",
            "trainer.max_steps=3000",
            "optim.total_steps=3000",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    out = []
    try:
        for line in proc.stdout:  # rank 0 prints one line per episode
            out.append(line)
            if line.startswith("step 6 "):
                break
        children = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
        assert len(children) == 1, children  # Lightning's launcher started rank 1 as our child
        os.kill(int(children[0]), signal.SIGUSR1)
        t0 = time.monotonic()
        out += proc.stdout.readlines()
        proc.wait(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    text = "".join(out)
    assert proc.returncode == 0, text[-3000:]
    assert time.monotonic() - t0 < 120
    assert log.read_text().split("\n")[0] == "requeue 777"
    assert len(log.read_text().strip().splitlines()) == 1  # rank 0 only
    ckpt = load_ckpt(tmp_path / "run/checkpoints/last.ckpt")
    assert ckpt["global_step"] % S == 0 and 6 < ckpt["global_step"] < 3000
    assert len(ckpt["data_state_per_rank"]) == 2
    assert "requeued" in text
