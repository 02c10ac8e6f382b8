"""Effective Remembrance (issue 23, acceptance 3): the probe's chunked, shared runs against the
definition computed directly: two whole forwards (with and without the first t tokens), softmax and
total variation in float64."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from stuffed_mamba.probes.effrem import PROBE, effective_remembrance, plan
from stuffed_mamba.probes.registry import Context, as_config
from tests.helpers import rel_err

from .conftest import make_tiny_lm


@pytest.fixture(autouse=True)
def _one_thread():
    # many tiny forwards: threads only contend on the shared cores (tests/conftest.py restores the count)
    torch.set_num_threads(1)


def direct(model, row: torch.Tensor, T: int, t: int) -> float:
    """EffRem_T(t) from its definition: q at T after x_0..x_{T-1} and after x_t..x_{T-1}, unchunked."""
    with torch.no_grad():
        p = torch.softmax(model(row[None, :T]).logits[0, -1].double(), -1)
        q = torch.softmax(model(row[None, t:T]).logits[0, -1].double(), -1)
    return 0.5 * float((p - q).abs().sum())


@pytest.mark.parametrize("chunk", [7, 4096])
def test_matches_two_whole_forwards(chunk):
    """Lengths and t that are not multiples of the chunk (nor of the model's SSD block); t shared by
    two T, so one run is read at both."""
    model = make_tiny_lm()
    ids = torch.randint(0, 256, (2, 61), generator=torch.Generator().manual_seed(3))
    grid = {45: [1, 10, 22, 44], 61: [10, 30, 60]}
    got = effective_remembrance(model, ids, grid, chunk_size=chunk)["effrem"]
    for T, ts in grid.items():
        ref = torch.tensor([[direct(model, row, T, t) for t in ts] for row in ids], dtype=torch.float64)
        assert got[T].shape == ref.shape
        assert rel_err(got[T], ref) < 1e-5, (T, got[T], ref)
    # a random model still depends on its context: the measurement is not trivially zero
    assert got[45].max() > 1e-2


def test_removing_nothing_is_zero_and_distant_prefixes_matter_less():
    """Sanity of the definition on a model with short memory: removing a few far tokens matters less
    than removing nearly all."""
    model = make_tiny_lm()
    ids = torch.randint(0, 256, (1, 40), generator=torch.Generator().manual_seed(5))
    r = effective_remembrance(model, ids, {40: [1, 39]}, chunk_size=9)["effrem"][40][0]
    assert 0 <= r[0] < r[1] <= 1


def test_plan_shares_runs():
    runs = plan([64, 128], {64: [8, 32], 128: [8, 64]})
    assert runs == {0: [64, 128], 8: [64, 128], 32: [64], 64: [128]}


def test_grid_summary_scalars_and_table():
    cfg = as_config(PROBE, {"multiples": [1.0, 2.0], "t_fractions": [0.25], "t_tokens": [40]})
    ctx = Context(train_length=64)
    grid = PROBE.grid(cfg, ctx)
    assert grid == {64: [16, 32, 40], 128: [32, 40, 64]}  # T/2 always; t = 40 at both
    model = make_tiny_lm()
    ids = torch.randint(0, 256, (2, 128), generator=torch.Generator().manual_seed(1))
    result = PROBE.run(model, (ids, grid), cfg)
    summary = PROBE.summary(result, cfg, ctx)
    assert summary["samples"] == 2
    assert summary["at_half"]["128"] == pytest.approx(float(result["effrem"][128][:, 2].mean()))
    scalars = PROBE.scalars(summary)
    assert set(scalars) == {"at_half/T=64", "at_half/T=128"} | {f"T={T}/t={t}" for T in grid for t in grid[T]}
    assert "EffRem" in PROBE.table(result, summary, cfg) and set(PROBE.figures(result, cfg, ctx)) == {"curves"}


@pytest.mark.parametrize(
    "overrides,message",
    [({"t_fractions": [1.0]}, "t_fractions"), ({"samples": 0}, "samples"), ({"lengths": [1]}, ">= 2")],
)
def test_bad_settings_are_one_line_errors(overrides, message):
    with pytest.raises(ValueError, match=message):
        PROBE.check(as_config(PROBE, overrides), Context(train_length=64))


def test_eval_effrem_writes_json_table_and_figure(tmp_path, capsys):
    """`stuffed-mamba eval effrem` exists through the registry and writes its outputs."""
    import json

    from stuffed_mamba.cli import main

    folder = tmp_path / "ckpt"
    make_tiny_lm().save_pretrained(folder)
    out = tmp_path / "out"
    argv = ["eval", "effrem", "--checkpoint", str(folder), "--tokenizer", "bytes", "--train-length", "50"]
    sample = str(Path(__file__).resolve().parents[2] / "data" / "sample")
    argv += ["--data", sample, "--min-doc-tokens", "64", "--samples", "1", "--multiples", "1,2"]
    assert main([*argv, "--chunk", "33", "--out", str(out), "--no-progress"]) == 0
    payload = json.loads((out / "effrem.json").read_text())
    assert set(payload["curves"]) == {"50", "100"} and 0 <= payload["at_half"]["100"] <= 1
    assert (out / "effrem_curves.png").is_file() and "EffRem" in (out / "effrem.txt").read_text()


@pytest.mark.slow
@pytest.mark.extended("CPU minutes; benchmarks/effrem_memory.py prints the same ratio")
def test_eval_effrem_peak_rss_at_64k_is_within_1_2x_of_4k():
    """Acceptance 3's memory half through the benchmark (two fresh `eval effrem` processes, one
    sequence, t = T/2): ~2 CPU-minutes; measured 1.001."""
    import re
    import subprocess
    import sys

    script = Path(__file__).resolve().parents[2] / "benchmarks" / "effrem_memory.py"
    run = subprocess.run([sys.executable, str(script), "--lengths", "4K,64K"], capture_output=True, text=True)
    ratio = re.search(r"= ([0-9.]+) \(target <= 1\.2\)", run.stdout)
    assert ratio is not None, run.stdout[-2000:] + run.stderr[-2000:]
    assert float(ratio.group(1)) <= 1.2 and run.returncode == 0, run.stdout[-2000:]
