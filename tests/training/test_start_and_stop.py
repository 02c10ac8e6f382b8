"""A newcomer's starts and stops (issue 13, sections 2-3): a damaged checkpoint, a changed architecture
or a finished run is one line and leaves run.dir as it was; a changed recipe is reported on resume;
Ctrl-C stops at an episode boundary with a checkpoint, and the rerun ends bit-identical to an
uninterrupted run; a resumed run's TensorBoard curves hold each step once."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from stuffed_mamba.cli import main
from stuffed_mamba.training.fit import fit
from tests.training.common import TINY_MODEL, load_ckpt, tiny_recipe
from tests.training.fakes import FakeEpisodeLoader

S = 3
TINY = "recipes/tiny_cpu.yaml"
# recipes/tiny_cpu.yaml shrunk to seconds, on the real data pipeline (the CLI takes no fake loader)
SMALL = [
    *(f"model.{k}={v}" for k, v in TINY_MODEL.items() if k != "vocab_size"),
    "data.tokenizer=bytes",
    f"data.segments={S}",
    "data.train_length=16",
    "data.batch_size=2",
    "optim.total_steps=60",
    "optim.warmup_steps=3",
    "probes.enabled=false",
    "trainer.enable_progress_bar=false",
    "run.checkpoint_every_n_steps=6",
]


def fake(rank, world_size):
    return FakeEpisodeLoader(batch_size=2, segments=S, train_length=16, rank=rank, world_size=world_size)


def train(run_dir, *overrides, log=lambda s: None):
    return fit(tiny_recipe(run_dir, *overrides), loader_factory=fake, log=log)


def snapshot(folder: Path) -> dict:
    """Every file under `folder` with its size, mtime and content hash."""
    return {
        str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns, hashlib.sha1(p.read_bytes()).hexdigest())
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def cli(capsys, *argv):
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


@pytest.fixture()
def finished(tmp_path):
    """A run of 6 steps in tmp_path/run (recipe.yaml, checkpoints/last.ckpt, TensorBoard events)."""
    run_dir = tmp_path / "run"
    train(run_dir, "trainer.max_steps=6")
    return run_dir


def test_resume_from_a_damaged_checkpoint_is_one_line_and_changes_nothing(finished, capsys):
    last = finished / "checkpoints/last.ckpt"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])  # a job killed mid-copy
    before = snapshot(finished)
    rc, _, err = cli(capsys, "fit", TINY, *SMALL, f"run.dir={finished}", "trainer.max_steps=12", "run.resume=auto")
    assert rc == 2
    line = one_line(err)
    assert str(last) in line and "damaged" in line and "run.resume=" in line
    assert snapshot(finished) == before


def test_export_of_a_damaged_checkpoint_is_one_line(finished, capsys, tmp_path):
    last = finished / "checkpoints/last.ckpt"
    last.write_bytes(last.read_bytes()[:1000])
    rc, _, err = cli(capsys, "export", str(last), str(tmp_path / "out"))
    assert rc == 2
    line = one_line(err)
    assert str(last) in line and "truncated" in line
    assert not (tmp_path / "out").exists()


def test_an_architecture_change_on_resume_is_refused_in_one_line(finished, capsys):
    before = snapshot(finished)
    rc, _, err = cli(
        capsys,
        "fit",
        TINY,
        *SMALL,
        f"run.dir={finished}",
        "trainer.max_steps=12",
        "run.resume=auto",
        "model.d_model=64",
    )
    assert rc == 2
    line = one_line(err)
    assert "d_model=32" in line and "d_model=64" in line and "architecture cannot change" in line
    assert snapshot(finished) == before


def test_rerunning_a_finished_run_says_so_and_writes_nothing(finished, capsys):
    before = snapshot(finished)
    rc, out, err = cli(capsys, "fit", TINY, *SMALL, f"run.dir={finished}", "trainer.max_steps=6", "run.resume=auto")
    assert rc == 0, err
    assert "already complete at optimiser step 6" in out and "trainer.max_steps=12" in out
    assert "from scratch" not in out and "done:" not in out
    assert snapshot(finished) == before


def test_a_changed_recipe_is_listed_on_resume(finished):
    lines = []
    result = train(finished, "trainer.max_steps=9", "optim.lr=0.001", "run.resume=auto", log=lines.append)
    assert result.global_step == 9
    changed = [line for line in lines if line.startswith("changed")]
    assert len(changed) == 1
    assert "optim.lr: 0.003 -> 0.001" in changed[0] and "trainer.max_steps: 6 -> 9" in changed[0]
    assert "run.resume" not in changed[0]
    # the recipe it was trained with travels in the checkpoint
    assert load_ckpt(finished / "checkpoints/last.ckpt")["recipe"]["optim"]["lr"] == 0.001


def test_a_failed_start_leaves_run_dir_untouched(tmp_path, capsys):
    """A start that fails after the recipe loaded (here: the tokenizer) writes nothing in run.dir."""
    run_dir = tmp_path / "run"
    rc, _, err = cli(capsys, "fit", TINY, *SMALL, f"run.dir={run_dir}", "data.tokenizer=/no/such/tokenizer.json")
    assert rc == 2 and "data.tokenizer" in one_line(err)
    assert not run_dir.exists()


def event_steps(run_dir: Path) -> Counter:
    """(tag, step) -> how many times it was written, over every event file of the run (no purging)."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    seen = Counter()
    for f in sorted((run_dir / "tensorboard").glob("events.out.tfevents.*")):
        for event in EventFileLoader(str(f)).Load():
            for value in event.summary.value:
                seen[(value.tag, event.step)] += 1
    return seen


def test_a_resumed_run_logs_each_step_once(tmp_path):
    """Resuming from step 6 after the run had logged up to 12: steps 9 and 12 are logged again, and the
    first run's events after step 6 are gone, so TensorBoard shows each step once, as a straight run does."""
    straight = tmp_path / "straight"
    train(straight, "trainer.max_steps=12")
    split = tmp_path / "split"
    train(split, "trainer.max_steps=12", "run.keep_every_n_steps=6")
    train(split, "trainer.max_steps=12", f"run.resume={split / 'checkpoints/step-0000006.ckpt'}")
    seen = event_steps(split)
    assert max(seen.values()) == 1, [k for k, n in seen.items() if n > 1][:5]
    losses = {step for tag, step in seen if tag == "train/loss"}
    assert losses == {step for tag, step in event_steps(straight) if tag == "train/loss"} == {3, 6, 9, 12}


def test_log_every_n_steps_counts_optimiser_steps(tmp_path):
    """Like every other *_every_n_steps: 3 segment steps per episode, a point each time the episode's
    steps cross a multiple of 4 (steps 6, 9, 12: crossing 4, 8, 12), not every 4th episode."""
    train(tmp_path, "trainer.max_steps=12", "trainer.log_every_n_steps=4")
    assert {step for tag, step in event_steps(tmp_path) if tag == "train/loss"} == {6, 9, 12}


@pytest.mark.slow
def test_ctrl_c_stops_at_an_episode_boundary_and_the_rerun_is_bit_identical(tmp_path):
    """SIGINT to `stuffed-mamba fit`: a checkpoint at the next episode boundary, the command that
    continues; running it ends exactly where an uninterrupted run ends."""
    steps = 36
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}

    def command(run_dir):
        return [
            sys.executable,
            "-m",
            "stuffed_mamba",
            "fit",
            TINY,
            *SMALL,
            f"run.dir={run_dir}",
            f"trainer.max_steps={steps}",
            f"optim.total_steps={steps}",
            "run.checkpoint_every_n_steps=1000",
        ]

    straight = tmp_path / "straight"
    subprocess.run(command(straight), check=True, capture_output=True, env=env, timeout=600)

    split = tmp_path / "split"
    proc = subprocess.Popen(command(split), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    for line in proc.stdout:  # one line per logged episode: training is under way
        if line.startswith("step "):
            proc.send_signal(signal.SIGINT)
            break
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    ckpt = load_ckpt(split / "checkpoints/last.ckpt")
    stopped = ckpt["global_step"]
    assert 0 < stopped < steps and stopped % S == 0  # an episode boundary, before the end
    assert f"interrupted (Ctrl-C) at optimiser step {stopped}" in out
    again = out.split("continue with: ")[1].splitlines()[0]
    assert (
        again.startswith("stuffed-mamba fit recipes/tiny_cpu.yaml")
        and again.endswith("run.resume=auto")
        or "run.resume" not in again
    )  # tiny_cpu resumes by default

    subprocess.run(command(split), check=True, capture_output=True, env=env, timeout=600)
    a, b = load_ckpt(straight / "checkpoints/last.ckpt"), load_ckpt(split / "checkpoints/last.ckpt")
    from tests.training.test_resume import assert_same_checkpoint

    assert_same_checkpoint(a, b)


def test_the_progress_bar_counts_optimiser_steps_toward_max_steps(tmp_path, capfd):
    """Lightning's bar counted episodes from 0 without a total; ours counts optimiser steps toward
    trainer.max_steps (with tqdm's ETA) and continues from the resumed step."""
    train(tmp_path, "trainer.max_steps=6", "trainer.enable_progress_bar=true")
    err = capfd.readouterr().out
    assert "optimiser steps" in err and "6/6 [" in err
    train(tmp_path, "trainer.max_steps=12", "run.resume=auto", "trainer.enable_progress_bar=true")
    err = capfd.readouterr().out
    assert "6/12 [" in err and "12/12 [" in err
    assert " 0/12 [" not in err and "3/12 [" not in err  # no restart from 0 after the resume
