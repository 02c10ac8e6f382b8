"""SIGUSR1 under Slurm: the handler only sets a flag; at the next episode boundary last.ckpt is
saved, the job requeued and training stops; run.resume=auto then continues bit-exactly."""

from __future__ import annotations

import os
import signal

import lightning as L

from stuffed_mamba.training.fit import fit
from stuffed_mamba.training.requeue import RequeueOnSignal
from tests.training.common import load_ckpt, scalars, tiny_recipe
from tests.training.fakes import FakeEpisodeLoader
from tests.training.test_resume import assert_same_checkpoint

S = 3


def fake(rank, world_size):
    return FakeEpisodeLoader(batch_size=2, segments=S, train_length=16, rank=rank, world_size=world_size)


class SignalAtStep(L.Callback):
    def __init__(self, step):
        self.step, self.sent = step, False

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step >= self.step and not self.sent:
            self.sent = True
            os.kill(os.getpid(), signal.SIGUSR1)


def test_usr1_checkpoints_requeues_and_resumes_exactly(tmp_path, monkeypatch):
    requeued = []
    monkeypatch.setattr(RequeueOnSignal, "_requeue_job", lambda self: requeued.append(os.environ["SLURM_JOB_ID"]))
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    before = signal.getsignal(signal.SIGUSR1)

    # sent after episode 2; the requeue callback sees it at the end of episode 3
    first = fit(tiny_recipe(tmp_path / "split", "trainer.max_steps=30"), loader_factory=fake,
                extra_callbacks=[SignalAtStep(2 * S)], log=lambda s: None)
    assert first.requeued and requeued == ["4242"]
    assert first.global_step == 3 * S
    assert load_ckpt(tmp_path / "split/checkpoints/last.ckpt")["global_step"] == 3 * S
    assert signal.getsignal(signal.SIGUSR1) == before, "the previous handler is restored"

    monkeypatch.delenv("SLURM_JOB_ID")
    fit(tiny_recipe(tmp_path / "split", "trainer.max_steps=15", "run.resume=auto"), loader_factory=fake, log=lambda s: None)
    fit(tiny_recipe(tmp_path / "straight", "trainer.max_steps=15"), loader_factory=fake, log=lambda s: None)
    assert_same_checkpoint(load_ckpt(tmp_path / "straight/checkpoints/last.ckpt"),
                           load_ckpt(tmp_path / "split/checkpoints/last.ckpt"))
    assert scalars(tmp_path / "straight", "loss") == scalars(tmp_path / "split", "loss")
    assert sorted(os.listdir(tmp_path / "split/checkpoints")) == ["last.ckpt"]
