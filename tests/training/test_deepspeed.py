"""The real DeepSpeed engine, 2 ranks over gloo on the CPU (tests/deepspeed_cpu.py lifts Lightning's
CUDA-only checks), through the real entry point: ZeRO stages 1, 2 and 3, fp32 and bf16-mixed.

- The engine applies the gradient DDP applies: per-segment losses equal DDP's (fp32, relative
  difference < 1e-5) in segment mode and in episode mode (ZeRO-2 and ZeRO-3), where the first S-1
  backward passes accumulate (DeepSpeed: not an accumulation boundary; DDP: `no_sync`, counted).
- Non-finite steps: a NaN loss or an inf gradient with a finite loss is skipped, counted, and not
  an optimiser step; K NaNs in a row abort with the message and an untouched checkpoint.
- Stop + `run.resume=auto` ends bit-identical to an uninterrupted run.

Stages x precisions: ZeRO-1 fp32 (= DDP) and bf16-mixed (inf gradient skipped); ZeRO-2 fp32 (= DDP,
resume, full BPTT) and bf16-mixed (K NaNs abort); ZeRO-3 fp32 (episode mode = DDP, probes skip) and
bf16-mixed (near the fp32 losses).

Every run is a pair of processes (~15-30 s each, mostly start-up): checks share runs.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.training.common import TINY_MODEL, scalars

S = 3
COMMON = [
    *(f"model.{k}={v}" for k, v in TINY_MODEL.items() if k != "vocab_size"),
    "data.min_doc_tokens=1024",
    f"data.segments={S}",
    "data.train_length=32",
    "data.batch_size=2",
    "optim.total_steps=60",
    "optim.warmup_steps=3",
    "probes.enabled=false",
    "trainer.devices=2",
    "trainer.accelerator=cpu",
    "trainer.enable_progress_bar=false",
]
DS = ["--deepspeed-cpu", "trainer.strategy=deepspeed"]
DDP = ["--count-allreduce", "trainer.strategy=ddp"]
EPISODE = "optim.optimizer_step=episode"


def fit(run_dir: Path, *args: str, returncode: int = 0) -> str:
    """`python -m tests.scripts.hooked_fit [hooks] fit recipes/tiny_cpu.yaml ...`; its stdout and stderr.
    Hooks are the arguments starting with `--` (`--name=value` for those with a value)."""
    hooks = [a for a in args if a.startswith("--")]
    overrides = [a for a in args if not a.startswith("--")]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "LOCAL_RANK", "WORLD_SIZE", "RANK"))}
    env["OMP_NUM_THREADS"] = "1"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.scripts.hooked_fit",
            *hooks,
            "fit",
            "recipes/tiny_cpu.yaml",
            *COMMON,
            f"run.dir={run_dir}",
            *overrides,
        ],
        capture_output=True,
        text=True,
        timeout=900,
        env=env,
    )
    assert r.returncode == returncode, r.stdout[-3000:] + r.stderr[-5000:]
    return r.stdout + r.stderr


def segment_losses(run_dir: Path) -> dict[tuple[str, int], float]:
    return {(tag, step): v for tag, by_step in scalars(run_dir, "loss_segment/").items() for step, v in by_step.items()}


def assert_same_losses(ds: Path, ddp: Path) -> None:
    a, b = segment_losses(ds), segment_losses(ddp)
    assert a.keys() == b.keys() and len(a) >= 2 * S
    for key in a:
        assert abs(a[key] - b[key]) <= 1e-5 * abs(b[key]), (key, a[key], b[key])


def allreduces_per_episode(run_dir: Path) -> list[int]:
    counts = [(run_dir / f"hooks/allreduce_rank{r}.txt").read_text().split() for r in range(2)]
    assert counts[0] == counts[1]
    return [int(n) for n in counts[0]]


def model_states(run_dir: Path) -> dict:
    """The weights in a DeepSpeed checkpoint folder (ZeRO-1/2: full in the model-states file)."""
    path = run_dir / "checkpoints/last.ckpt/checkpoint/mp_rank_00_model_states.pt"
    return torch.load(path, map_location="cpu", weights_only=False)


def assert_checkpoint_folder(run_dir: Path, global_step: int) -> dict:
    folder = run_dir / "checkpoints/last.ckpt"
    assert folder.is_dir() and (folder / "latest").read_text().strip() == "checkpoint"
    shards = sorted(p.name for p in (folder / "checkpoint").iterdir())
    assert shards == [
        "mp_rank_00_model_states.pt",
        "zero_pp_rank_0_mp_rank_00_optim_states.pt",
        "zero_pp_rank_1_mp_rank_00_optim_states.pt",
    ], shards
    states = model_states(run_dir)
    assert states["global_step"] == global_step and states["world_size"] == 2
    return states


def assert_loss_fell(run_dir: Path) -> None:
    loss = scalars(run_dir, "train/loss")["train/loss"]
    steps = sorted(loss)
    assert loss[steps[-1]] < loss[steps[0]] - 0.01, loss


@pytest.fixture(scope="module")
def ddp_segment(tmp_path_factory):
    run = tmp_path_factory.mktemp("ddp_segment")
    fit(run, *DDP, "trainer.max_steps=6")
    return run


@pytest.fixture(scope="module")
def zero2_segment(tmp_path_factory):
    """ZeRO-2 fp32, segment mode, 2 episodes: the reference of the resume test too."""
    run = tmp_path_factory.mktemp("zero2_segment")
    out = fit(run, *DS, "trainer.max_steps=6")
    assert "done: 6 optimiser steps, 2 episodes" in out  # one step per segment, not two
    return run


@pytest.fixture(scope="module")
def ddp_episode(tmp_path_factory):
    run = tmp_path_factory.mktemp("ddp_episode")
    fit(run, *DDP, EPISODE, "trainer.max_steps=2")
    return run


@pytest.mark.slow
def test_zero2_segment_mode_applies_the_gradient_ddp_applies(zero2_segment, ddp_segment):
    assert allreduces_per_episode(ddp_segment) == [S, S]  # DDP: one all-reduce per segment
    assert_same_losses(zero2_segment, ddp_segment)
    assert_loss_fell(zero2_segment)
    states = assert_checkpoint_folder(zero2_segment, global_step=6)
    assert states["tbptt"]["nonfinite_total"] == 0


@pytest.mark.slow
@pytest.mark.extended("ZeRO-1 trains in CI under bf16-mixed (the non-finite test); ZeRO-2 fp32 equals DDP in CI")
def test_zero1_fp32_segment_mode_equals_ddp(ddp_segment, tmp_path):
    fit(tmp_path, *DS, "trainer.deepspeed.stage=1", "trainer.max_steps=6")
    assert_same_losses(tmp_path, ddp_segment)
    assert_loss_fell(tmp_path)
    assert_checkpoint_folder(tmp_path, global_step=6)


@pytest.mark.slow
@pytest.mark.extended("ZeRO-3 equals DDP in CI in fp32 episode mode; bf16-mixed under the engine in ZeRO-1/2 tests")
def test_zero3_bf16_mixed_trains_near_the_fp32_losses(ddp_segment, tmp_path):
    """ZeRO-3 with bf16 matmuls: the loss falls, each rank writes its shard of the parameters, and
    the per-segment losses stay within bf16's rounding of the fp32 DDP run's (not equal: bf16)."""
    fit(tmp_path, *DS, "trainer.deepspeed.stage=3", "trainer.precision=bf16-mixed", "trainer.max_steps=6")
    assert_loss_fell(tmp_path)
    a, b = segment_losses(tmp_path), segment_losses(ddp_segment)
    assert a.keys() == b.keys() and max(abs(a[k] - b[k]) / b[k] for k in a) < 2e-2, (a, b)
    folder = tmp_path / "checkpoints/last.ckpt/checkpoint"
    assert len(list(folder.glob("*optim_states.pt"))) == 2 and len(list(folder.glob("*model_states.pt"))) == 2


@pytest.mark.slow
@pytest.mark.parametrize(
    "stage",
    [pytest.param(2, marks=pytest.mark.extended("ZeRO-2 sums S backwards per step in CI in the full-BPTT test")), 3],
)
def test_episode_mode_sums_the_segments_gradients_like_ddp(stage, ddp_episode, tmp_path):
    """ZeRO-2 with every backward a boundary would keep only the last segment's gradient; the
    episode's second step would then differ. DDP all-reduces once per episode (`no_sync`)."""
    assert allreduces_per_episode(ddp_episode) == [1, 1]
    probes = []
    if stage == 3:  # the probes skip with a warning (partitioned parameters); training goes on
        probes = [
            "probes.enabled=true",
            "probes.passkey.every_n_steps=1",
            "probes.retention.every_n_steps=1",
            "probes.states.every_n_steps=1",
            "probes.position_loss.every_n_steps=1",
        ]
    out = fit(tmp_path, *DS, EPISODE, f"trainer.deepspeed.stage={stage}", "trainer.max_steps=2", *probes)
    assert "done: 2 optimiser steps, 2 episodes" in out
    assert_same_losses(tmp_path, ddp_episode)
    if stage == 3:
        warnings = [line for line in out.splitlines() if "skipped: parameters are partitioned (ZeRO stage 3)" in line]
        assert any("passkey" in w for w in warnings), out[-3000:]
        assert len(warnings) == len(set(warnings)), warnings  # once per probe, not at every step
        assert not (tmp_path / "probes").exists()
        folder = tmp_path / "checkpoints/last.ckpt/checkpoint"
        assert len(list(folder.glob("*optim_states.pt"))) == 2 and len(list(folder.glob("*model_states.pt"))) == 2


@pytest.mark.slow
def test_full_bptt_under_deepspeed_equals_ddp(ddp_episode, tmp_path):
    """optim.bptt=full (issue 12): ZeRO-2, with the accumulation boundary at the last of the S
    backwards only, gives DDP's per-segment losses over two episodes; DDP all-reduces once per
    episode; and the second episode differs from truncated BPTT's (the gradient crossed segments)."""
    full = [EPISODE, "optim.bptt=full", "trainer.max_steps=2"]
    fit(tmp_path / "ddp", *DDP, *full)
    assert allreduces_per_episode(tmp_path / "ddp") == [1, 1]
    fit(tmp_path / "ds", *DS, *full, "trainer.deepspeed.stage=2")
    assert_same_losses(tmp_path / "ds", tmp_path / "ddp")
    full_losses, truncated = segment_losses(tmp_path / "ddp"), segment_losses(ddp_episode)
    second = [key for key in full_losses if key[1] == 2]
    assert second and max(abs(full_losses[k] - truncated[k]) for k in second) > 1e-5


@pytest.mark.slow
def test_zero2_resume_ends_bit_identical(zero2_segment, tmp_path):
    fit(tmp_path, *DS, "trainer.max_steps=3")
    out = fit(tmp_path, *DS, "trainer.max_steps=6", "run.resume=auto")
    assert "done: 6 optimiser steps" in out
    a, b = model_states(zero2_segment)["module"], model_states(tmp_path)["module"]
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.slow
def test_zero1_bf16_skips_a_non_finite_gradient_and_trains_on(tmp_path):
    """An inf gradient with a finite loss (call 1 = episode 0, segment 1): DeepSpeed's own overflow
    check skips the update; the module counts it, and it is not an optimiser step (as under DDP)."""
    out = fit(
        tmp_path,
        *DS,
        "--inf-grad-calls=1:2",
        "trainer.deepspeed.stage=1",
        "trainer.precision=bf16-mixed",
        "trainer.max_steps=5",
    )
    # 6 segments, one skipped: 5 steps in 2 episodes
    assert "done: 5 optimiser steps, 2 episodes" in out and "non-finite steps skipped 1" in out
    assert_loss_fell(tmp_path)
    states = assert_checkpoint_folder(tmp_path, global_step=5)
    assert states["tbptt"]["nonfinite_total"] == 1
    assert scalars(tmp_path, "train/nonfinite_skipped")["train/nonfinite_skipped"] == {2: 1.0, 5: 1.0}
    grad_norms = scalars(tmp_path, "train/grad_norm")["train/grad_norm"]
    assert all(torch.isfinite(torch.tensor(v)) for v in grad_norms.values()), grad_norms


@pytest.mark.slow
@pytest.mark.extended(
    "the abort runs in CI on one process (test_nonfinite); the engine's skip path in the ZeRO-1 bf16 test"
)
def test_k_nans_in_a_row_abort_with_a_checkpoint_from_before(tmp_path):
    """tests/training/test_nonfinite.py's test under ZeRO-2 with bf16-mixed: NaN losses from call 7
    (episode 2, segment 1) on, K=4: the message names step 7, last.ckpt is the one from step 6, untouched."""
    out = fit(
        tmp_path,
        *DS,
        "--nan-calls=7:100",
        "--save-weights-before=6",
        "trainer.max_steps=30",
        "trainer.precision=bf16-mixed",
        "optim.max_nonfinite_in_a_row=4",
        "run.checkpoint_every_n_steps=3",
        returncode=1,
    )
    assert "stuffed-mamba fit: aborted: 4 non-finite losses/gradients in a row, the first at optimiser step 7" in out
    states = assert_checkpoint_folder(tmp_path, global_step=6)
    before = torch.load(tmp_path / "hooks/weights_before_call_6.pt")
    assert torch.equal(states["module"]["model.lm_head.weight"], before)
