"""The probe callbacks' mechanics with a stand-in trainer: schedule, rank 0 only, barrier, no side effects."""

import json
import random
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from stuffed_mamba.callbacks import (
    PasskeyCallback,
    PositionLossCallback,
    ProbesConfig,
    RetentionCallback,
    StateStatsCallback,
    build_callbacks,
)
from stuffed_mamba.callbacks.base import ProbeCallback

from stuffed_mamba.probes.registry import Context
from tests.probes.conftest import ByteTok, make_tiny_lm


class CountingProbe(ProbeCallback):
    name = "counting"

    def __init__(self, **kw):
        super().__init__(**kw)
        self.ran_at, self.modes = [], []

    def run_probe(self, model, deadline):
        self.modes.append((model.training, torch.is_grad_enabled()))
        torch.rand(5)  # a probe that draws from the global stream must not shift training's
        random.random()
        np.random.rand()
        return 1.0

    def log_result(self, writer, result, step):
        self.ran_at.append(step)
        return {"value": result}


class FakeStrategy:
    def __init__(self):
        self.barriers = 0
        self.zero_stage_3 = False

    def barrier(self, name=None):
        self.barriers += 1


def fake_trainer(step=0, rank0=True):
    return SimpleNamespace(global_step=step, is_global_zero=rank0, strategy=FakeStrategy(), loggers=[])


def fake_module():
    return SimpleNamespace(model=make_tiny_lm().train())


def drive(cb, steps, rank0=True):
    """global_step after each training_step (S optimiser steps per episode)."""
    trainer, module = fake_trainer(rank0=rank0), fake_module()
    cb.on_train_start(trainer, module)
    for s in steps:
        trainer.global_step = s
        cb.on_train_batch_end(trainer, module, None, None, 0)
    return trainer, module


def test_runs_when_step_crosses_a_multiple(tmp_path):
    cb = CountingProbe(every_n_steps=4, time_budget_s=10, run_dir=str(tmp_path))
    trainer, module = drive(cb, [3, 6, 9, 12, 13, 14, 15, 16])  # 3 segments per episode, then 1
    assert cb.ran_at == [6, 9, 12, 16]
    assert trainer.strategy.barriers == 4
    assert json.loads((tmp_path / "probes" / "counting" / "step_00000016.json").read_text())["value"] == 1.0
    # eval mode and no_grad inside, train mode restored after
    assert cb.modes == [(False, False)] * 4 and module.model.training


def test_resume_does_not_reprobe_the_resumed_step():
    cb = CountingProbe(every_n_steps=4, time_budget_s=10)
    trainer, module = fake_trainer(step=8), fake_module()
    cb.on_train_start(trainer, module)
    for s in (9, 10, 12):
        trainer.global_step = s
        cb.on_train_batch_end(trainer, module, None, None, 0)
    assert cb.ran_at == [12]


def test_other_ranks_only_wait():
    cb = CountingProbe(every_n_steps=2, time_budget_s=10)
    trainer, _ = drive(cb, [2, 4], rank0=False)
    assert cb.ran_at == [] and trainer.strategy.barriers == 2


def test_global_rng_streams_are_untouched():
    cb = CountingProbe(every_n_steps=1, time_budget_s=10)
    trainer, module = fake_trainer(step=1), fake_module()
    torch.manual_seed(123), random.seed(1), np.random.seed(2)
    cb.run(trainer, module)
    assert cb.ran_at == [1]
    after = (torch.rand(3), random.random(), np.random.rand())
    torch.manual_seed(123), random.seed(1), np.random.seed(2)
    ref = (torch.rand(3), random.random(), np.random.rand())
    assert torch.equal(after[0], ref[0]) and after[1:] == ref[1:]


def test_a_failing_probe_is_counted_not_fatal():
    class Broken(CountingProbe):
        def run_probe(self, model, deadline):
            raise RuntimeError("boom")

    cb = Broken(every_n_steps=1, time_budget_s=10)
    trainer, module = drive(cb, [1, 2])
    assert cb.failures == 2 and "boom" in cb.last_error and trainer.strategy.barriers == 2
    assert module.model.training  # train mode restored even so


def test_zero3_skips_without_deadlock():
    cb = CountingProbe(every_n_steps=1, time_budget_s=10)
    trainer, module = fake_trainer(), fake_module()
    trainer.strategy.zero_stage_3 = True
    cb.run(trainer, module)
    assert cb.ran_at == [] and trainer.strategy.barriers == 0  # all ranks skip alike


@pytest.mark.parametrize("make", ["passkey", "retention", "states", "position_loss"])
def test_each_probe_callback_runs_on_a_tiny_model(make, tmp_path):
    text = lambda length, n, min_doc: torch.randint(0, 256, (n, length), generator=torch.Generator().manual_seed(0))  # noqa: E731
    ctx = Context(tokenizer=ByteTok(), train_length=50, eval_text=text)
    cb = {
        "passkey": lambda: PasskeyCallback(ctx, lengths=[400], samples=2, max_new_tokens=2, every_n_steps=1),
        "retention": lambda: RetentionCallback(ctx, length=200, samples=2, every_n_steps=1),
        "states": lambda: StateStatsCallback(ctx, length=200, n_points=4, every_n_steps=1),
        "position_loss": lambda: PositionLossCallback(ctx, length=200, samples=2, buckets=6, every_n_steps=1),
    }[make]()
    cb.raise_errors = True
    cb.run_dir = str(tmp_path)
    drive(cb, [1])
    assert cb.failures == 0 and cb.last_result["step"] == 1
    assert (tmp_path / "probes" / cb.name / "step_00000001.json").is_file()


def test_build_callbacks_from_config():
    data = SimpleNamespace(train_length=128, source="nowhere", listing=None)
    cbs = build_callbacks(
        {"passkey": {"every_n_steps": 7}, "states": {"enabled": False}},
        tokenizer=ByteTok(),
        data_cfg=data,
        run_dir="/tmp/x",
    )
    names = [type(c).__name__ for c in cbs]
    assert names == [
        "PasskeyCallback",
        "RetentionCallback",
        "PositionLossCallback",
        "RegistryProbeCallback",
        "ForgettingDashboard",
    ]
    assert cbs[0].every_n_steps == 7
    assert cbs[0].probe.lengths(cbs[0].cfg, cbs[0].ctx) == [512]  # T_train/2 .. 4 T_train, at least 512
    assert build_callbacks(ProbesConfig(enabled=False), tokenizer=None, data_cfg=data) == []
    with pytest.raises(Exception, match="nope"):
        build_callbacks({"passkey": {"nope": 1}}, tokenizer=None, data_cfg=data)


def test_passkey_lengths_too_short_fail_at_build():
    data = SimpleNamespace(train_length=128, source="nowhere", listing=None)
    with pytest.raises(ValueError, match="probes.passkey.lengths: .*too short"):
        build_callbacks({"passkey": {"lengths": [100, 1000]}}, tokenizer=ByteTok(), data_cfg=data)


def test_missing_evaluation_text_is_reported_once_then_cached():
    calls = []

    def no_text():
        calls.append(1)
        raise ValueError("only 0 evaluation sequence(s)")

    cb = PositionLossCallback(Context(train_length=50, eval_text=lambda *a: no_text()), every_n_steps=1)
    drive(cb, [1, 2, 3])
    assert cb.failures == 3 and len(calls) == 1 and "evaluation text" in cb.last_error
