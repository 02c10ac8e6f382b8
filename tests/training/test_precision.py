"""Precision policy: under every strategy the forward reads `A_log`, `dt_bias`, `D` in fp32 and keeps
the SSM state in fp32, while in_proj / out_proj compute in bf16 under `bf16-mixed`; the checkpoint holds
fp32 parameters. Seen from inside the forward (tests/scripts/dtype_spy.py hooks), single device, DDP and
the real DeepSpeed engine (2 ranks, gloo)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from stuffed_mamba.ops.ssd import ssd, ssd_step
from stuffed_mamba.training.config import ConfigError, load_recipe
from stuffed_mamba.training.strategy import deepspeed_config
from tests.helpers import rel_err
from tests.scripts import dtype_spy
from tests.training.common import TINY_MODEL, load_ckpt, tiny_recipe
from tests.training.fakes import FakeEpisodeLoader

DYNAMICS = ("A_log", "dt_bias", "D")
OVERRIDES = [
    *(f"model.{k}={v}" for k, v in TINY_MODEL.items() if k != "vocab_size"),
    "data.min_doc_tokens=1024",
    "data.segments=3",
    "data.train_length=32",
    "data.batch_size=2",
    "optim.total_steps=60",
    "optim.warmup_steps=3",
    "probes.enabled=false",
    "trainer.precision=bf16-mixed",
    "trainer.devices=2",
    "trainer.accelerator=cpu",
    "trainer.enable_progress_bar=false",
    "trainer.max_steps=3",
]


def assert_policy(record: dict) -> None:
    for name in DYNAMICS:
        assert record[name] == "torch.float32", (name, record)
    assert record["ssm_state"] == "torch.float32", record
    assert record["autocast"] is True, record
    for proj in ("in_proj", "out_proj"):  # fp32 weights, bf16 compute
        assert record[proj]["weight"] == "torch.float32", (proj, record)
        assert record[proj]["output"] == "torch.bfloat16", (proj, record)


def test_the_scan_computes_in_fp32_under_bf16_autocast():
    """Under autocast the torch backend's einsums would run in bf16 and round the state every block."""
    torch.manual_seed(0)
    b, T, h, p, g, n = 2, 133, 4, 8, 2, 16  # T not a multiple of the block
    x, B, C = (torch.randn(b, T, *s).bfloat16() for s in ((h, p), (g, n), (g, n)))
    dt = torch.rand(b, T, h) * 0.1
    A = -torch.rand(h)
    h0 = torch.randn(b, h, p, n)
    y_ref, s_ref = ssd(x, dt, A, B, C, chunk_size=16, initial_state=h0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, s = ssd(x, dt, A, B, C, chunk_size=16, initial_state=h0)
        y1, s1 = ssd_step(x[:, 0], dt[:, 0], A, B[:, 0], C[:, 0], h0)
    y1_ref, s1_ref = ssd_step(x[:, 0], dt[:, 0], A, B[:, 0], C[:, 0], h0)
    assert s.dtype == s1.dtype == torch.float32
    assert rel_err(s, s_ref) < 1e-6 and rel_err(s1, s1_ref) < 1e-6
    assert torch.equal(y, y_ref) and torch.equal(y1, y1_ref)


def test_half_precision_parameters_are_refused_with_the_reason():
    for precision in ("bf16-true", "16-true"):
        with pytest.raises(
            ConfigError, match=rf"trainer.precision: {precision} stores A_log, dt_bias and D .*bf16-mixed"
        ):
            load_recipe("recipes/tiny_cpu.yaml", [f"trainer.precision={precision}"])
    with pytest.raises(ConfigError, match="trainer.precision: must be one of"):
        load_recipe("recipes/tiny_cpu.yaml", ["trainer.precision=16-mixed"])


def test_deepspeed_config_keeps_fp32_parameters_and_autocasts():
    cfg = load_recipe("recipes/mamba2_370m_256k.yaml")
    ds = deepspeed_config(cfg)
    assert ds["bf16"] == {"enabled": False}  # DeepSpeed's bf16 would cast every parameter
    assert ds["torch_autocast"] == {"enabled": True, "dtype": "bfloat16", "lower_precision_safe_modules": []}
    fp32 = deepspeed_config(load_recipe("recipes/mamba2_370m_256k.yaml", ["trainer.precision=32-true"]))
    assert fp32["torch_autocast"]["enabled"] is False and fp32["bf16"] == {"enabled": False}


def test_bf16_mixed_on_one_device(tmp_path):
    from stuffed_mamba.training.fit import fit

    records: list = []
    handles = dtype_spy.install(records)
    try:
        fit(
            tiny_recipe(tmp_path, "trainer.precision=bf16-mixed", "trainer.max_steps=3"),
            loader_factory=lambda r, w: FakeEpisodeLoader(rank=r, world_size=w),
            log=lambda s: None,
        )
    finally:
        for handle in handles:
            handle.remove()
    assert len(records) == 3 * TINY_MODEL["n_layer"]  # every layer of every segment
    for record in records:
        assert_policy(record)
    state = load_ckpt(tmp_path / "checkpoints/last.ckpt")["state_dict"]
    assert {v.dtype for v in state.values()} == {torch.float32}


def run_two_ranks(tmp_path, strategy):
    spy = tmp_path / "spy"
    spy.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "LOCAL_RANK", "WORLD_SIZE", "RANK"))}
    env.update(OMP_NUM_THREADS="1", STUFFED_MAMBA_TEST_DTYPES=str(spy))
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.scripts.dtype_spy",
            "fit",
            "recipes/tiny_cpu.yaml",
            *OVERRIDES,
            f"trainer.strategy={strategy}",
            f"run.dir={tmp_path / 'run'}",
        ],
        capture_output=True,
        text=True,
        timeout=900,
        env=env,
    )
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    records = {f: json.loads((spy / f).read_text()) for f in sorted(os.listdir(spy))}
    assert sorted(records) == ["rank0.json", "rank1.json"]
    for record in records.values():
        assert_policy(record)
    return tmp_path / "run" / "checkpoints" / "last.ckpt"


@pytest.mark.slow
@pytest.mark.extended("DDP wraps the module without casting: one device and the DeepSpeed engine run in CI")
def test_bf16_mixed_under_ddp(tmp_path):
    state = load_ckpt(run_two_ranks(tmp_path, "ddp"))["state_dict"]
    assert {v.dtype for v in state.values()} == {torch.float32}


@pytest.mark.slow
def test_bf16_mixed_under_the_real_deepspeed_engine(tmp_path):
    """Lightning's DeepSpeed bf16-mixed would cast every parameter to bf16 (measured before the fix:
    the model states in last.ckpt/ held A_log, dt_bias, D as bfloat16)."""
    folder = run_two_ranks(tmp_path, "deepspeed")
    states = torch.load(folder / "checkpoint" / "mp_rank_00_model_states.pt", map_location="cpu", weights_only=False)
    module = states["module"]
    for name in DYNAMICS:
        keys = [k for k in module if k.endswith(f"mixer.{name}")]
        assert len(keys) == TINY_MODEL["n_layer"] and all(module[k].dtype == torch.float32 for k in keys), name
    assert {v.dtype for v in module.values()} == {torch.float32}
    for rank in range(2):  # ZeRO-2: each rank's fp32 partition of the parameters and Adam moments
        optim = torch.load(
            folder / "checkpoint" / f"zero_pp_rank_{rank}_mp_rank_00_optim_states.pt",
            map_location="cpu",
            weights_only=False,
        )["optimizer_state_dict"]
        assert {t.dtype for t in optim["single_partition_of_fp32_groups"]} == {torch.float32}
