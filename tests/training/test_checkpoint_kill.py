"""A kill at any moment of a checkpoint save never loses the run: `run.resume=auto` continues from the
newest complete checkpoint. Under the real DeepSpeed engine (2 ranks, gloo), whose checkpoint is a folder
replaced by two renames; the single-file case is one atomic rename (tests/training/test_resume.py)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from stuffed_mamba.training import checkpoint as ck
from stuffed_mamba.training.config import ConfigError
from tests.training.common import TINY_MODEL, tiny_recipe

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
    f"run.checkpoint_every_n_steps={S}",
    "trainer.strategy=deepspeed",
    "trainer.devices=2",
    "trainer.accelerator=cpu",
    "trainer.enable_progress_bar=false",
]


def folder(path: Path, step: int, *, complete: bool = True) -> Path:
    """A stand-in checkpoint folder (its step in a file) as save_atomically leaves it."""
    path.mkdir(parents=True)
    (path / "step").write_text(str(step))
    if complete:
        (path / ck.COMPLETE).write_text(f"global_step {step}\n")
    return path


def step_of(path: Path) -> int:
    return int((path / "step").read_text())


@pytest.mark.parametrize(
    "state, expected",
    [
        # (last, tmp, tmp complete?, old) -> the step resume=auto continues from
        (dict(last=6), 6),
        (dict(last=6, tmp=9, tmp_complete=False), 6),  # killed during the write of step 9
        (dict(last=6, tmp=9, tmp_complete=True), 9),  # killed after the marker, before the renames
        (dict(old=6, tmp=9, tmp_complete=True), 9),  # killed between the two renames
        (dict(last=9, old=6), 9),  # killed before .old was removed
        (dict(old=6, tmp=9, tmp_complete=False), 6),  # (not produced by save_atomically) the complete one
        (dict(tmp=3, tmp_complete=False), None),  # killed during the first write: nothing to resume
    ],
)
def test_resume_finds_the_newest_complete_checkpoint_and_the_next_save_keeps_it(tmp_path, state, expected):
    last = tmp_path / "checkpoints" / ck.LAST
    if "last" in state:
        folder(last, state["last"])
    if "tmp" in state:
        folder(ck._tmp(last), state["tmp"], complete=state["tmp_complete"])
    if "old" in state:
        folder(ck._old(last), state["old"])
    found = ck.resolve_resume("auto", tmp_path)
    assert (step_of(Path(found)) if found else None) == expected
    # what the next save does before writing its own .tmp: the newest complete one becomes last.ckpt,
    # nothing else is left (a kill during the coming write then finds it)
    ck._settle(last)
    assert sorted(os.listdir(last.parent)) == ([ck.LAST] if expected else [])
    if expected:
        assert step_of(last) == expected and ck.resolve_resume("auto", tmp_path) == str(last)


def test_a_fresh_start_is_refused_when_only_the_set_aside_checkpoint_is_left(tmp_path):
    from stuffed_mamba.training.fit import fit

    folder(ck._old(tmp_path / "checkpoints" / ck.LAST), 6)
    with pytest.raises(ConfigError, match=r"already holds last.ckpt.old .*run.resume=auto"):
        fit(tiny_recipe(tmp_path, "run.resume=null"), log=lambda s: None)


def run(run_dir, *extra, kill: str | None = None):
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("SLURM_", "LOCAL_RANK", "WORLD_SIZE", "RANK", "STUFFED_MAMBA_TEST"))
    }
    env["OMP_NUM_THREADS"] = "1"
    if kill:
        env["STUFFED_MAMBA_TEST_KILL"] = kill
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.scripts.ds_kill",
            "fit",
            "recipes/tiny_cpu.yaml",
            *OVERRIDES,
            f"run.dir={run_dir}",
            "trainer.max_steps=12",
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=900,
        env=env,
        start_new_session=True,  # the kill takes the run's process group, not pytest
    )
    if kill:
        assert r.returncode == -9, r.stdout[-2000:] + r.stderr[-3000:]
        assert "[ds_kill] killing" in r.stdout
    else:
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    return r


def ds_step(path: Path) -> int:
    states = torch.load(path / "checkpoint" / "mp_rank_00_model_states.pt", map_location="cpu", weights_only=False)
    return states["global_step"]


def losses(stdout: str) -> dict[int, str]:
    return dict((int(s), loss) for s, loss in re.findall(r"^step (\d+) episode \d+ loss (\S+)", stdout, re.M))


@pytest.mark.slow
def test_sigkill_between_the_renames_and_during_a_write_under_deepspeed(tmp_path):
    ckpts = tmp_path / "checkpoints"
    last, tmp, old = ckpts / ck.LAST, ckpts / (ck.LAST + ".tmp"), ckpts / (ck.LAST + ".old")

    # 1. killed between `last.ckpt -> .old` and `.tmp -> last.ckpt` of the save at step 2S: no last.ckpt
    run(tmp_path, kill="between_renames:2")
    assert not last.exists() and ds_step(old) == S and ds_step(tmp) == 2 * S

    # 2. resume=auto continues from the newest complete one (.tmp, step 2S), not from scratch nor from .old;
    #    killed in its first save (step 3S) while DeepSpeed writes
    b = run(tmp_path, "run.resume=auto", kill="write:1")
    assert f"resume       {tmp}" in b.stdout
    assert min(losses(b.stdout)) == 3 * S  # the first episode trained is the one after step 2S
    assert ds_step(last) == 2 * S and (last / ck.COMPLETE).exists()  # promoted before the write began
    assert not (tmp / ck.COMPLETE).exists() and not (tmp / "latest").exists()  # the half-written one

    # 3. resume=auto ignores the half-written folder and continues from step 2S again, to the end
    c = run(tmp_path, "run.resume=auto")
    assert f"resume       {last}" in c.stdout
    assert min(losses(c.stdout)) == 3 * S
    # the same state gives the same next episode: both runs resumed from the same complete checkpoint
    assert losses(c.stdout)[3 * S] == losses(b.stdout)[3 * S]
    assert sorted(n for n in os.listdir(ckpts) if n.startswith(ck.LAST)) == [ck.LAST]  # no .tmp, no .old
    assert ds_step(last) == 4 * S
