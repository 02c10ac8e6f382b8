"""A non-finite loss skips its step (counted, no update, state reset); K in a row abort the run
with a message, leaving a checkpoint from before the first one."""

from __future__ import annotations

import lightning as L
import pytest
import torch

from stuffed_mamba.training.fit import fit
from stuffed_mamba.training.module import NonFiniteLossError
from tests.training.common import load_ckpt, tiny_recipe
from tests.training.fakes import FakeEpisodeLoader

S = 3


def fake(rank, world_size):
    return FakeEpisodeLoader(batch_size=2, segments=S, train_length=16, rank=rank, world_size=world_size)


class PoisonSegments(L.Callback):
    """Makes the loss of the given forward calls (0-based, counted over the run) NaN, and records
    what each call received and the weights before it."""

    def __init__(self, bad_calls):
        self.bad_calls = set(bad_calls)
        self.states, self.weights = [], []

    def setup(self, trainer, pl_module, stage):
        model = pl_module.model
        forward = model.forward

        def poisoned(input_ids, state=None, labels=None):
            k = len(self.states)
            self.states.append(state)
            self.weights.append(model.lm_head.weight.detach().clone())
            out = forward(input_ids, state=state, labels=labels)
            if k in self.bad_calls:
                out.loss = out.loss * float("nan")
            return out

        model.forward = poisoned


def test_one_nan_segment_is_skipped_counted_and_resets_the_state(tmp_path):
    poison = PoisonSegments({4})  # episode 1, segment 1
    r = fit(
        tiny_recipe(tmp_path, "trainer.max_steps=8"), loader_factory=fake, extra_callbacks=[poison], log=lambda s: None
    )
    assert r.nonfinite_skipped == 1
    assert r.global_step == 8 and r.episodes == 3  # 9 segments, 8 optimiser steps
    assert torch.equal(poison.weights[4], poison.weights[5]), "no update from the NaN segment"
    assert not torch.equal(poison.weights[3], poison.weights[4])
    assert poison.states[5] is None, "the segment after a NaN starts from a zero state"
    assert poison.states[4] is not None
    assert load_ckpt(tmp_path / "checkpoints/last.ckpt")["tbptt"]["nonfinite_total"] == 1


def test_k_nans_in_a_row_abort_with_a_checkpoint_from_before(tmp_path):
    poison = PoisonSegments(range(7, 100))  # from episode 2, segment 1 on
    cfg = tiny_recipe(
        tmp_path, "trainer.max_steps=30", "optim.max_nonfinite_in_a_row=4", "run.checkpoint_every_n_steps=3"
    )
    with pytest.raises(NonFiniteLossError, match=r"4 non-finite .* first at optimiser step 7") as e:
        fit(cfg, loader_factory=fake, extra_callbacks=[poison], log=lambda s: None)
    assert "\n" not in str(e.value)
    ckpt = load_ckpt(tmp_path / "checkpoints/last.ckpt")
    # saved after step 6 (episode 2's end), not at the boundary inside the NaN streak
    assert ckpt["global_step"] == 6
    assert torch.equal(ckpt["state_dict"]["model.lm_head.weight"], poison.weights[6])
