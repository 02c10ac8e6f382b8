"""A Slurm USR1 that reaches a rank while it is still starting (importing torch and Lightning, or
re-executing itself under jemalloc) is kept, not fatal: `fit` then checkpoints at its first episode
boundary and requeues, as for a signal during training."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import torch

from stuffed_mamba import early_signals
from tests.training.common import TINY_MODEL

USR1 = signal.SIGUSR1


def test_a_recorded_signal_raises_the_requeue_flag(tmp_path):
    from stuffed_mamba.training.requeue import RequeueOnSignal

    before = signal.getsignal(USR1)
    try:
        early_signals.catch()
        os.kill(os.getpid(), USR1)  # the default action would end pytest here
        assert early_signals.received(USR1)
        requeue = RequeueOnSignal(tmp_path)
        requeue.install()
        assert requeue.flag and signal.getsignal(USR1) == requeue._handler
    finally:
        signal.signal(USR1, before)
        early_signals._received.clear()


def test_the_signal_survives_the_re_execution():
    """One USR1 before the exec (handed over), one between the exec and the new recorder (pending:
    blocked across the exec). Without the block the second would end the new process."""
    after = textwrap.dedent("""
        import os, signal
        from stuffed_mamba import early_signals
        handed_over = os.environ["_STUFFED_MAMBA_EARLY_SIGNALS"]
        os.environ["_STUFFED_MAMBA_EARLY_SIGNALS"] = ""  # so that only the pending signal can count
        early_signals.catch()
        print(handed_over, early_signals.received(signal.SIGUSR1), flush=True)
    """)
    script = textwrap.dedent(f"""
        import os, signal, sys
        from stuffed_mamba import early_signals
        early_signals.catch()
        os.kill(os.getpid(), signal.SIGUSR1)           # recorded here: handed over in the environment
        env = dict(os.environ)
        early_signals.hold_across_exec(env)
        os.kill(os.getpid(), signal.SIGUSR1)           # blocked now: pending across the exec
        os.execve(sys.executable, [sys.executable, "-c", {after!r}], env)
    """)
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.split() == [str(int(signal.SIGUSR1)), "True"], (
        r.returncode,
        r.stdout,
        r.stderr,
    )


def test_usr1_during_start_up_checkpoints_at_the_first_episode_boundary(tmp_path):
    """The console command under a fake Slurm job, USR1 sent while it imports: exit 0, last.ckpt at
    the end of episode 1 (S optimiser steps), `scontrol requeue JOB` called once."""
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    (bin_ / "scontrol").write_text(f'#!/bin/sh\necho "$@" >> {tmp_path}/scontrol.txt\n')
    (bin_ / "scontrol").chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env.update(SLURM_JOB_ID="4242", PATH=f"{bin_}:{env['PATH']}", OMP_NUM_THREADS="1")
    S = 2
    model = [f"model.{k}={v}" for k, v in TINY_MODEL.items() if k != "vocab_size"]
    p = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "stuffed_mamba",
            "fit",
            "recipes/tiny_cpu.yaml",
            *model,
            "data.min_doc_tokens=1024",
            f"data.segments={S}",
            "data.train_length=32",
            "data.batch_size=1",
            "probes.enabled=false",
            "trainer.max_steps=40",
            "trainer.enable_progress_bar=false",
            f"run.dir={tmp_path / 'run'}",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    time.sleep(0.5)  # inside the imports (or the re-execution), long before fit's own handler
    p.send_signal(USR1)
    out, _ = p.communicate(timeout=600)
    assert p.returncode == 0, out[-3000:]
    assert f"saved {tmp_path / 'run/checkpoints/last.ckpt'}, requeued job 4242" in out
    assert (tmp_path / "scontrol.txt").read_text().split() == ["requeue", "4242"]
    ckpt = torch.load(tmp_path / "run/checkpoints/last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == S


def test_with_requeue_off_the_signal_gets_its_default_action_back(tmp_path, monkeypatch):
    """run.requeue_on_signal=false under Slurm: fit will not honour USR1, so the recorder the
    console command installed must not swallow it either."""
    from stuffed_mamba.training.config import load_recipe
    from stuffed_mamba.training.fit import _catch_requeue_signal

    before = signal.getsignal(USR1)
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    try:
        early_signals.catch()
        cfg = load_recipe("recipes/tiny_cpu.yaml", ["run.requeue_on_signal=false", f"run.dir={tmp_path}"])
        assert _catch_requeue_signal(cfg, tmp_path, checkpoints=None) is None
        assert signal.getsignal(USR1) == signal.SIG_DFL
    finally:
        signal.signal(USR1, before)
        early_signals._received.clear()
