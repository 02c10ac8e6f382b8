"""Resume is exact: N steps + resume to 2N == 2N uninterrupted steps, bit for bit on CPU
(weights, optimiser, logged losses, data position), also after a Slurm USR1 requeue; and what
max_steps inside an episode does."""

from __future__ import annotations

import os
import signal

import lightning as L
import pytest
import torch

from stuffed_mamba.training.fit import fit
from tests.training.common import load_ckpt, scalars, tiny_recipe
from tests.training.fakes import FakeEpisodeLoader

S = 3


def fake(rank, world_size):
    return FakeEpisodeLoader(batch_size=2, segments=S, train_length=16, rank=rank, world_size=world_size)


def assert_same_checkpoint(a, b):
    sa, sb = a["state_dict"], b["state_dict"]
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k
    oa, ob = a["optimizer_states"][0]["state"], b["optimizer_states"][0]["state"]
    assert oa.keys() == ob.keys()
    for i in oa:
        for k in oa[i]:
            assert torch.equal(torch.as_tensor(oa[i][k]), torch.as_tensor(ob[i][k])), (i, k)
    assert a["global_step"] == b["global_step"]
    assert deep_equal(a["data_state_per_rank"], b["data_state_per_rank"])


def deep_equal(a, b) -> bool:
    import numpy as np

    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return np.array_equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(deep_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(deep_equal(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def run(run_dir, *overrides, factory=fake):
    return fit(tiny_recipe(run_dir, *overrides), loader_factory=factory, log=lambda s: None)


N = 4 * S  # optimiser steps of the first half


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """2N steps without interruption: the reference of every resume below."""
    run_dir = tmp_path_factory.mktemp("straight")
    result = run(run_dir, f"trainer.max_steps={2 * N}")
    return run_dir, result


def test_resume_is_bit_exact(tmp_path, straight):
    straight_dir, straight_result = straight
    first = run(tmp_path / "split", f"trainer.max_steps={N}")
    assert first.global_step == N
    # the saved data position is exactly the episodes trained on: with a plain training_step(batch)
    # Lightning would have prefetched one more and the resume would skip it
    half = load_ckpt(tmp_path / "split/checkpoints/last.ckpt")
    assert half["tbptt"]["episodes_done"] == N // S and half["data_state_per_rank"] == [{"next_index": N // S}]
    second = run(tmp_path / "split", f"trainer.max_steps={2 * N}", "run.resume=auto")
    assert second.global_step == straight_result.global_step == 2 * N
    assert second.episodes == straight_result.episodes == 2 * N // S  # counted across the resume

    a = load_ckpt(straight_dir / "checkpoints/last.ckpt")
    b = load_ckpt(tmp_path / "split/checkpoints/last.ckpt")
    assert_same_checkpoint(a, b)
    assert b["data_state_per_rank"] == [{"next_index": 2 * N // S}]  # neither repeats nor skips

    la, lb = scalars(straight_dir, "loss"), scalars(tmp_path / "split", "loss")
    assert la.keys() == lb.keys() and len(la) == S
    for tag in la:
        assert sorted(la[tag]) == list(range(S, 2 * N + 1, S))
        assert la[tag] == lb[tag], tag  # bit for bit
    assert scalars(straight_dir, "train/loss") == scalars(tmp_path / "split", "train/loss")


class SignalAtStep(L.Callback):
    def __init__(self, step):
        self.step, self.sent = step, False

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step >= self.step and not self.sent:
            self.sent = True
            os.kill(os.getpid(), signal.SIGUSR1)


def test_usr1_checkpoints_requeues_and_resumes_exactly(tmp_path, monkeypatch, straight):
    """SIGUSR1 under Slurm: the handler only sets a flag; at the next episode boundary last.ckpt is
    saved, the job requeued and training stops; run.resume=auto then continues bit-exactly."""
    from stuffed_mamba.training.requeue import RequeueOnSignal

    requeued = []
    monkeypatch.setattr(RequeueOnSignal, "_requeue_job", lambda self: requeued.append(os.environ["SLURM_JOB_ID"]))
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    before = signal.getsignal(signal.SIGUSR1)

    # sent after episode 2; the requeue callback sees it at the end of episode 3
    first = fit(
        tiny_recipe(tmp_path, f"trainer.max_steps={2 * N}"),
        loader_factory=fake,
        extra_callbacks=[SignalAtStep(2 * S)],
        log=lambda s: None,
    )
    assert first.requeued and requeued == ["4242"]
    assert first.global_step == 3 * S
    assert load_ckpt(tmp_path / "checkpoints/last.ckpt")["global_step"] == 3 * S
    # a previous handler is put back; the default (terminate) becomes "ignore": a late USR1 must not
    # kill a rank whose run is complete
    assert signal.getsignal(signal.SIGUSR1) == (signal.SIG_IGN if before == signal.SIG_DFL else before)

    monkeypatch.delenv("SLURM_JOB_ID")
    run(tmp_path, f"trainer.max_steps={2 * N}", "run.resume=auto")
    straight_dir, _ = straight
    assert_same_checkpoint(
        load_ckpt(straight_dir / "checkpoints/last.ckpt"), load_ckpt(tmp_path / "checkpoints/last.ckpt")
    )
    assert scalars(straight_dir, "loss") == scalars(tmp_path, "loss")
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["last.ckpt"]


def test_max_steps_inside_an_episode_finishes_the_episode(tmp_path):
    """trainer.max_steps counts optimiser steps and is checked between episodes: a stop inside an
    episode completes it (global_step rounds up to a multiple of S) and checkpoints there."""
    r = run(tmp_path / "r", "trainer.max_steps=7")
    assert r.global_step == 9 and r.episodes == 3
    ckpt = load_ckpt(tmp_path / "r/checkpoints/last.ckpt")
    assert ckpt["global_step"] == 9
    # resuming with a max_steps already reached trains nothing more, and says so
    again = run(tmp_path / "r", "trainer.max_steps=8", "run.resume=auto")
    assert again.already_complete and again.global_step == 9 and again.episodes == 3
    # a run that ended between checkpoint multiples (every 6 here) continues when extended
    more = run(tmp_path / "r", "trainer.max_steps=12", "run.resume=auto")
    assert more.global_step == 12 and more.episodes == 4


def test_full_bptt_resume_is_bit_exact(tmp_path):
    """optim.bptt=full (one step per episode): 3 + 3 episodes across a resume == 6 straight."""
    full = ("optim.optimizer_step=episode", "optim.bptt=full")
    straight = run(tmp_path / "straight", "trainer.max_steps=6", *full)
    run(tmp_path / "split", "trainer.max_steps=3", *full)
    split = run(tmp_path / "split", "trainer.max_steps=6", "run.resume=auto", *full)
    assert straight.global_step == split.global_step == 6 and split.episodes == 6
    a = load_ckpt(tmp_path / "straight/checkpoints/last.ckpt")
    b = load_ckpt(tmp_path / "split/checkpoints/last.ckpt")
    assert_same_checkpoint(a, b)
    assert scalars(tmp_path / "straight", "loss") == scalars(tmp_path / "split", "loss")
    loss = scalars(tmp_path / "straight", "train/loss")["train/loss"]
    assert loss[6] < loss[1]  # it trains


@pytest.mark.slow
def test_resume_with_the_real_pipeline_is_bit_exact(tmp_path):
    """The same with data/sample through the real StatefulDataLoader pipeline."""
    data = ["data.tokenizer=data/sample/tokenizer.json", "data.min_doc_tokens=1024", "data.train_length=32"]
    straight = run(tmp_path / "straight", "trainer.max_steps=12", *data, factory=None)
    run(tmp_path / "split", "trainer.max_steps=6", *data, factory=None)
    run(tmp_path / "split", "trainer.max_steps=12", "run.resume=auto", *data, factory=None)
    assert straight.global_step == 12
    a = load_ckpt(tmp_path / "straight/checkpoints/last.ckpt")
    b = load_ckpt(tmp_path / "split/checkpoints/last.ckpt")
    assert_same_checkpoint(a, b)
    assert scalars(tmp_path / "straight", "loss") == scalars(tmp_path / "split", "loss")


def test_each_rank_resumes_from_its_own_data_position():
    """Lightning restores rank 0's loader state on every rank; the module swaps in the rank's own."""
    from types import SimpleNamespace

    from tests.training.common import tiny_module

    module = tiny_module()
    for rank in (0, 1):
        ckpt = {
            "data_state_per_rank": [{"pos": "rank0"}, {"pos": "rank1"}],
            "world_size": 2,
            "loops": {"fit_loop": {"state_dict": {"combined_loader": [{"pos": "rank0"}]}}},
        }
        module._trainer = SimpleNamespace(global_rank=rank, world_size=2)
        module.on_load_checkpoint(ckpt)
        assert ckpt["loops"]["fit_loop"]["state_dict"]["combined_loader"] == [{"pos": f"rank{rank}"}]
    module._trainer = SimpleNamespace(global_rank=0, world_size=4)
    with pytest.raises(RuntimeError, match="written by 2 ranks, this run has 4"):
        module.on_load_checkpoint(ckpt)


def test_checkpoints_land_on_episode_boundaries_and_history_is_kept(tmp_path):
    """checkpoint_every_n_steps=4 with S=3: saved at the first episode boundaries past 4, 8, 12
    (steps 6, 9, 12); keep_every_n_steps=6 keeps copies at 6 and 12; no temporary file is left."""
    r = run(tmp_path, "trainer.max_steps=12", "run.checkpoint_every_n_steps=4", "run.keep_every_n_steps=6")
    assert r.global_step == 12
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["last.ckpt", "step-0000006.ckpt", "step-0000012.ckpt"]
    assert load_ckpt(tmp_path / "checkpoints/step-0000006.ckpt")["global_step"] == 6


def test_a_fresh_start_never_overwrites_an_earlier_run(tmp_path):
    """resume null in a run.dir holding last.ckpt is a one-line error; run.overwrite=true starts over."""
    from stuffed_mamba.training.config import ConfigError

    run(tmp_path, f"trainer.max_steps={S}")
    before = (tmp_path / "checkpoints/last.ckpt").read_bytes()
    with pytest.raises(ConfigError, match="run.dir=.* already holds last.ckpt.*run.resume=auto.*run.overwrite=true"):
        run(tmp_path, f"trainer.max_steps={S}", "optim.lr=0.5", "run.resume=null")
    assert (tmp_path / "checkpoints/last.ckpt").read_bytes() == before, "the earlier checkpoint is untouched"
    again = run(tmp_path, f"trainer.max_steps={S}", "run.resume=null", "run.overwrite=true")
    assert again.global_step == S
