"""Probes never time out the job: their inputs (the evaluation text, possibly over HTTP) are built on
rank 0 before training, so no rank waits for them in a collective; the collective timeout is a recipe
setting (`trainer.collective_timeout_s`)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest

from stuffed_mamba.training.config import ConfigError, load_recipe
from stuffed_mamba.training.strategy import build_strategy
from tests.helpers import QuietFiles, serve
from tests.training.common import TINY_MODEL

# The collective timeout of the run: short (the stall below must outlast it, and the test waits for the
# stall), but above the ranks' start-up skew and each probe's budget.
TIMEOUT_S = 40
STALL_S = 55  # the evaluation text's first read waits this long: longer than the collective timeout


@pytest.mark.parametrize("strategy", ["ddp", "deepspeed"])
def test_the_collective_timeout_is_a_recipe_setting(strategy):
    default = load_recipe("recipes/mamba2_370m_256k.yaml", [f"trainer.strategy={strategy}"])
    assert build_strategy(default)._timeout == timedelta(hours=1)  # torch's default is 30 minutes
    cfg = load_recipe(
        "recipes/mamba2_370m_256k.yaml", [f"trainer.strategy={strategy}", "trainer.collective_timeout_s=7200"]
    )
    assert build_strategy(cfg)._timeout == timedelta(hours=2)


def test_the_collective_timeout_must_outlast_a_probe():
    with pytest.raises(ConfigError, match=r"trainer.collective_timeout_s: must exceed probes.passkey.time_budget_s=60"):
        load_recipe("recipes/tiny_cpu.yaml", ["probes.passkey.time_budget_s=60", "trainer.collective_timeout_s=30"])
    with pytest.raises(ConfigError, match="trainer.collective_timeout_s: must be > 0"):
        load_recipe("recipes/tiny_cpu.yaml", ["trainer.collective_timeout_s=0", "probes.enabled=false"])
    assert load_recipe("recipes/tiny_cpu.yaml", ["trainer.collective_timeout_s=30", "probes.enabled=false"])


def stalling_handler(stall_s: float, seen: list) -> type[QuietFiles]:
    """A file server whose first request for a document shard answers after stall_s; requests go to `seen`."""
    lock = threading.Lock()

    class Handler(QuietFiles):
        def do_GET(self):
            if "/documents/" in self.path:
                with lock:
                    first = not seen
                    seen.append((time.monotonic(), self.path))
                if first:
                    time.sleep(stall_s)
            return super().do_GET()

    return Handler


@pytest.mark.slow
def test_a_stalled_evaluation_text_does_not_time_out_two_ranks(tmp_path):
    seen: list = []
    budget = 15  # each probe's time budget, below the collective timeout

    def overrides(url: str) -> list[str]:
        return [
            *(f"model.{k}={v}" for k, v in TINY_MODEL.items() if k != "vocab_size"),
            f"data.source={url}",
            "data.listing=en-sample-head_middle.txt",
            f"data.timeout_s={3 * STALL_S}",
            "data.segments=3",
            "data.train_length=32",
            "data.batch_size=2",
            "optim.total_steps=60",
            "optim.warmup_steps=3",
            "trainer.strategy=ddp",
            "trainer.devices=2",
            "trainer.enable_progress_bar=false",
            "trainer.max_steps=6",
            f"trainer.collective_timeout_s={TIMEOUT_S}",
            # the two probes that read evaluation text, after every episode (S = 3 steps)
            "probes.passkey.enabled=false",
            "probes.states.enabled=false",
            "probes.memory_lengths.enabled=false",
            "probes.retention.every_n_steps=3",
            "probes.retention.length=256",
            f"probes.retention.time_budget_s={budget}",
            "probes.position_loss.every_n_steps=3",
            "probes.position_loss.length=256",
            f"probes.position_loss.time_budget_s={budget}",
            f"run.dir={tmp_path}",
        ]

    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "LOCAL_RANK", "WORLD_SIZE", "RANK"))}
    env["OMP_NUM_THREADS"] = "1"
    with serve(Path("data/sample").resolve(), stalling_handler(STALL_S, seen)) as url:
        t0 = time.monotonic()
        r = subprocess.run(
            [
                sys.executable,
                "-m",
                "stuffed_mamba",
                "fit",
                "recipes/tiny_cpu.yaml",
                *overrides(url),
            ],
            capture_output=True,
            text=True,
            timeout=1200,
            env=env,
        )
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-4000:]
    assert "done: 6 optimiser steps, 2 episodes" in r.stdout
    assert "timed out" not in out.lower() and "timeout" not in r.stderr.lower()
    # the stall really happened, was longer than the collective timeout, and was the evaluation text's,
    # read before training started
    assert seen and time.monotonic() - t0 > STALL_S > TIMEOUT_S
    lines = r.stdout.splitlines()
    ready = next(i for i, line in enumerate(lines) if line.startswith("probes       inputs"))
    first_step = next(i for i, line in enumerate(lines) if line.startswith("step "))
    assert ready < first_step and "retention" in lines[ready] and "position_loss" in lines[ready]
    # both probes ran after both episodes
    for probe in ("retention", "position_loss"):
        results = sorted(f.name for f in (tmp_path / "probes" / probe).glob("step_*.json"))
        assert results == ["step_00000003.json", "step_00000006.json"], probe
