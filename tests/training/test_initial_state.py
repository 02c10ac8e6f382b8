"""optim.initial_state (issue 23): what each mode starts an episode from, that the LightningModule
passes it on, the exact gradient from a given h_0, bit-exact resume (one process, 2 DDP ranks),
DeepSpeed ZeRO-2 = DDP under `passed`, and the one-line recipe errors."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from stuffed_mamba.cli import main
from stuffed_mamba.model import Mamba2Config, Mamba2LM
from stuffed_mamba.model.state import ModelState
from stuffed_mamba.training import module as module_mod
from stuffed_mamba.training.config import ConfigError, load_recipe
from stuffed_mamba.training.fit import fit
from stuffed_mamba.training.initial_state import FITTED_MOMENTUM, InitialState
from tests.helpers import TINY_ARCH, rel_err, tiny_recipe_overrides
from tests.training.common import TINY_MODEL, load_ckpt, tiny_recipe
from tests.training.fakes import FakeEpisodeLoader

CONFIG = Mamba2Config(**{**TINY_ARCH, "vocab_size": 50})  # 2 layers, 4 heads of P = N = 16
MODES = ["zeros", "passed", "noise", "fitted_noise"]
STD = ["optim.initial_state_std=0.5"]


def mode_args(mode: str) -> list[str]:
    return [f"optim.initial_state={mode}", *(STD if mode == "noise" else [])]


def random_state(batch: int, seed: int, offset: float = 0.0) -> ModelState:
    g = torch.Generator().manual_seed(seed)
    state = ModelState.zeros(CONFIG, batch)
    return state.map(lambda t: torch.randn(t.shape, generator=g) + offset)


# ---------------------------------------------------------------------- the modes


def test_zeros_is_the_models_default_and_stores_nothing():
    h = InitialState("zeros", CONFIG)
    h.end(random_state(2, 0))
    assert h.begin(2, "cpu", 0) is None  # backward_episode's default: today's call exactly
    assert h.state_dict() == {"mode": "zeros", "carried": None, "moments": None, "generator": None}


def test_passed_starts_each_episode_from_the_previous_final_state():
    h = InitialState("passed", CONFIG)
    assert h.begin(2, "cpu", 0) is None  # the first episode: zeros
    final = random_state(2, 1).map(lambda t: t.requires_grad_())
    h.end(final)
    got = h.begin(2, "cpu", 0)
    for a, b in zip(got.tensors(), final.tensors(), strict=True):
        assert torch.equal(a, b) and not a.requires_grad
    final.layers[0].ssm.data.add_(1)  # the carried copy is not the model's tensor
    assert not torch.equal(got.layers[0].ssm, final.layers[0].ssm)
    assert h.begin(3, "cpu", 0) is None  # another row count (a short last batch): zeros
    h.end(None)  # a non-finite episode has no final state
    assert h.begin(2, "cpu", 0) is None


def test_noise_is_gaussian_in_the_ssm_state_only_and_reproducible():
    h = InitialState("noise", CONFIG, std=0.5, seed=3)
    state = h.begin(64, "cpu", 0)
    for layer in state.layers:
        assert torch.equal(layer.conv, torch.zeros_like(layer.conv))
        assert layer.ssm.dtype == torch.float32 and layer.ssm.shape == (64, 4, 16, 16)
        # 65536 draws per layer: the sample std is within 1% of sigma, the mean within 4 standard errors
        assert rel_err(layer.ssm.std(), torch.tensor(0.5)) < 0.01
        assert abs(float(layer.ssm.mean())) < 4 * 0.5 / 256
    again = InitialState("noise", CONFIG, std=0.5, seed=3).begin(64, "cpu", 0)
    assert all(torch.equal(a, b) for a, b in zip(state.tensors(), again.tensors(), strict=True))
    other = InitialState("noise", CONFIG, std=0.5, seed=3).begin(64, "cpu", 1)  # another data rank
    assert not torch.equal(state.layers[0].ssm, other.layers[0].ssm)
    assert not torch.equal(state.layers[0].ssm, h.begin(64, "cpu", 0).layers[0].ssm)  # a new draw per episode


def test_fitted_noise_follows_the_moving_moments_of_final_states():
    h = InitialState("fitted_noise", CONFIG, seed=0)
    assert h.begin(2, "cpu", 0) is None  # no statistics yet: zeros
    finals = [random_state(3, seed, offset=seed) for seed in range(1, 4)]
    m1 = m2 = None
    for final in finals:
        h.end(final)
        ssm = np.stack([layer.ssm.numpy().astype(np.float64) for layer in final.layers])  # [L, B, H, P, N]
        e1, e2 = ssm.mean(axis=(1, 3, 4)), (ssm**2).mean(axis=(1, 3, 4))  # [L, H]
        m1 = e1 if m1 is None else FITTED_MOMENTUM * m1 + (1 - FITTED_MOMENTUM) * e1
        m2 = e2 if m2 is None else FITTED_MOMENTUM * m2 + (1 - FITTED_MOMENTUM) * e2
    assert rel_err(h.moments, torch.tensor(np.stack([m1, m2]), dtype=torch.float32)) < 1e-6
    mean, std = m1, np.sqrt(m2 - m1**2)
    state = h.begin(256, "cpu", 0)
    for layer_idx, layer in enumerate(state.layers):
        assert torch.equal(layer.conv, torch.zeros_like(layer.conv))
        x = layer.ssm.double().transpose(0, 1).reshape(CONFIG.nheads, -1).numpy()  # [H, 256*P*N]
        assert np.allclose(x.mean(axis=1), mean[layer_idx], atol=0.01 * std[layer_idx].max())
        assert np.allclose(x.std(axis=1), std[layer_idx], rtol=0.01)


@pytest.mark.parametrize("mode", ["passed", "noise", "fitted_noise"])
def test_state_dict_round_trip_continues_the_same_draws(mode):
    a = InitialState(mode, CONFIG, std=0.5 if mode == "noise" else None, seed=1)
    for seed in range(3):
        a.begin(2, "cpu", 0)
        a.end(random_state(2, seed))
    b = InitialState(mode, CONFIG, std=0.5 if mode == "noise" else None, seed=99)  # another seed: restored
    b.load_state_dict(a.state_dict())
    for seed in range(3, 5):
        sa, sb = a.begin(2, "cpu", 0), b.begin(2, "cpu", 0)
        assert all(torch.equal(x, y) for x, y in zip(sa.tensors(), sb.tensors(), strict=True))
        a.end(random_state(2, seed))
        b.end(random_state(2, seed))


# ---------------------------------------------------------------------- the gradient from h_0


def test_backward_episode_from_an_initial_state():
    """truncated = the detached loop from h_0; full = one backward over the S*T tokens from h_0."""
    from stuffed_mamba.training.bptt import backward_episode

    torch.manual_seed(0)
    model = Mamba2LM(CONFIG)
    with torch.no_grad():  # slow decay (A near 0): h_0 still matters at the end of the episode
        for block in model.backbone.layers:
            block.mixer.A_log.fill_(-3.0)
    B, S, T = 2, 3, 21
    ids = torch.randint(0, 50, (B, S * T + 1), generator=torch.Generator().manual_seed(1))
    inputs, labels = ids[:, :-1].reshape(B, S, T), ids[:, 1:].reshape(B, S, T)
    h0 = random_state(B, 5)

    def grads():
        return {n: p.grad.detach().clone() for n, p in model.named_parameters()}

    model.zero_grad(set_to_none=True)
    state, want_losses = h0, []
    for s in range(S):
        out = model(inputs[:, s], state=state, labels=labels[:, s])
        (out.loss / S).backward()
        want_losses.append(out.loss.detach())
        state = out.state.detach()
    want = grads()
    model.zero_grad(set_to_none=True)
    losses = backward_episode(model, inputs, labels, mode="truncated", initial_state=h0)
    assert torch.equal(losses, torch.stack(want_losses))
    assert all(torch.equal(v, grads()[n]) for n, v in want.items())

    model.zero_grad(set_to_none=True)
    whole = model(inputs.flatten(1), state=h0, labels=labels.flatten(1)).loss
    whole.backward()
    want = grads()
    model.zero_grad(set_to_none=True)
    losses = backward_episode(model, inputs, labels, mode="full", initial_state=h0)
    assert rel_err(losses.mean(), whole.detach()) < 1e-5
    assert max(rel_err(grads()[n], want[n]) for n in want) < 1e-5
    zero_start = model(inputs.flatten(1), labels=labels.flatten(1)).loss
    assert rel_err(zero_start.detach(), whole.detach()) > 1e-3  # h_0 mattered, by more than rounding


@pytest.mark.parametrize("mode", ["passed", "fitted_noise"])
def test_the_module_starts_each_episode_from_the_mode_state(tmp_path, monkeypatch, mode):
    """What reaches backward_episode: zeros first; then, under `passed`, episode k-1's final state."""
    calls = []
    real = module_mod.backward_episode

    def spy(*args, **kw):
        losses, state = real(*args, **kw)
        calls.append((kw["initial_state"], state))
        return losses, state

    monkeypatch.setattr(module_mod, "backward_episode", spy)
    run(tmp_path, mode, "trainer.max_steps=9")
    assert len(calls) == 3 and calls[0][0] is None
    for (_, final), (start, _) in zip(calls, calls[1:], strict=False):
        pairs = list(zip(start.tensors(), final.tensors(), strict=True))
        if mode == "passed":
            assert all(torch.equal(a, b) for a, b in pairs)
        else:  # a draw: fresh values, conv zeros
            assert all(torch.count_nonzero(layer.conv) == 0 for layer in start.layers)
            assert not any(torch.equal(a, b) for a, b in pairs[1::2])


# ---------------------------------------------------------------------- resume, one process


def fake(rank, world_size):
    return FakeEpisodeLoader(batch_size=2, segments=3, train_length=16, rank=rank, world_size=world_size)


def run(run_dir, mode, *overrides):
    return fit(tiny_recipe(run_dir, *mode_args(mode), *overrides), loader_factory=fake, log=lambda s: None)


def assert_same_end(a, b):
    assert a["global_step"] == b["global_step"]
    for k in a["state_dict"]:
        assert torch.equal(a["state_dict"][k], b["state_dict"][k]), k
    oa, ob = a["optimizer_states"][0]["state"], b["optimizer_states"][0]["state"]
    for i in oa:
        for k in oa[i]:
            assert torch.equal(torch.as_tensor(oa[i][k]), torch.as_tensor(ob[i][k])), (i, k)
    assert same(a["initial_state"], b["initial_state"])


def same(a, b) -> bool:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return a == b


STEP_MODES = {  # optimiser steps per episode (S = 3), overrides
    "segment": (3, ["optim.optimizer_step=segment"]),
    "episode": (1, ["optim.optimizer_step=episode", "optim.bptt=full"]),
}


def assert_mode_state_is_live(ckpt, mode):
    """The checkpoint holds what the mode carries (the resume comparisons are not of empty state)."""
    own = ckpt["initial_state"][0]
    assert own["mode"] == mode
    assert (own["carried"] is not None) == (mode == "passed")
    assert (own["moments"] is not None) == (mode == "fitted_noise")
    assert (own["generator"] is not None) == (mode in ("noise", "fitted_noise"))


@pytest.mark.parametrize("step", STEP_MODES)
@pytest.mark.parametrize("mode", MODES)
def test_resume_at_an_episode_boundary_is_bit_exact(tmp_path, mode, step):
    per_episode, extra = STEP_MODES[step]
    run(tmp_path / "straight", mode, *extra, f"trainer.max_steps={4 * per_episode}")
    run(tmp_path / "split", mode, *extra, f"trainer.max_steps={2 * per_episode}")
    run(tmp_path / "split", mode, *extra, f"trainer.max_steps={4 * per_episode}", "run.resume=auto")
    a = load_ckpt(tmp_path / "straight/checkpoints/last.ckpt")
    b = load_ckpt(tmp_path / "split/checkpoints/last.ckpt")
    assert a["global_step"] == 4 * per_episode
    assert_mode_state_is_live(a, mode)
    assert_same_end(a, b)


def test_the_modes_change_training(tmp_path):
    """The resume tests can fail: a mode's state changes the weights (noise against zeros here)."""
    run(tmp_path / "zeros", "zeros", "trainer.max_steps=6")
    run(tmp_path / "noise", "noise", "trainer.max_steps=6")
    a = load_ckpt(tmp_path / "zeros/checkpoints/last.ckpt")["state_dict"]
    b = load_ckpt(tmp_path / "noise/checkpoints/last.ckpt")["state_dict"]
    assert any(not torch.equal(a[k], b[k]) for k in a)


# ---------------------------------------------------------------------- one-line errors


@pytest.mark.parametrize(
    "overrides, key, words",
    [
        (["optim.initial_state=warm"], "optim.initial_state", "zeros, passed, noise, fitted_noise"),
        (["optim.initial_state=noise", "optim.initial_state_std=-0.1"], "optim.initial_state_std", "> 0"),
        (["optim.initial_state_std=0.1"], "optim.initial_state_std", "initial_state=noise"),
        (["optim.initial_state=passed", "optim.initial_state_std=0.1"], "optim.initial_state_std", "passed"),
        (["optim.initial_state=noise"], "optim.initial_state", "initial_state_std"),
    ],
)
def test_bad_values_are_one_line_errors(tmp_path, capsys, overrides, key, words):
    with pytest.raises(ConfigError) as e:
        load_recipe("recipes/tiny_cpu.yaml", overrides)
    assert len(str(e.value).splitlines()) == 1 and str(e.value).startswith(key) and words in str(e.value)
    rc = main(["fit", "recipes/tiny_cpu.yaml", *tiny_recipe_overrides(tmp_path / "run"), *overrides])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert rc != 0 and len(lines) == 1 and key in lines[0] and "Traceback" not in err
    assert not (tmp_path / "run").exists()  # nothing built, nothing written


# ---------------------------------------------------------------------- 2 ranks: DDP and DeepSpeed

MULTI = [
    *(f"model.{k}={v}" for k, v in TINY_MODEL.items() if k != "vocab_size"),
    "data.min_doc_tokens=1024",
    "data.segments=3",
    "data.train_length=32",
    "data.batch_size=2",
    "optim.total_steps=60",
    "optim.warmup_steps=3",
    "probes.enabled=false",
    "trainer.devices=2",
    "trainer.accelerator=cpu",
    "trainer.enable_progress_bar=false",
]


def fit_2_ranks(run_dir, *args):
    """`python -m tests.scripts.hooked_fit [--hooks] fit recipes/tiny_cpu.yaml ...` on 2 CPU ranks."""
    hooks = [a for a in args if a.startswith("--")]
    overrides = [a for a in args if not a.startswith("--")]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "LOCAL_RANK", "WORLD_SIZE", "RANK"))}
    env["OMP_NUM_THREADS"] = "1"
    cmd = [sys.executable, "-m", "tests.scripts.hooked_fit", *hooks, "fit", "recipes/tiny_cpu.yaml", *MULTI]
    r = subprocess.run([*cmd, f"run.dir={run_dir}", *overrides], capture_output=True, text=True, timeout=900, env=env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-5000:]


# On 2 ranks CI runs the mode with the most per-rank state, passed (each rank's carried rows), in
# episode mode; every mode resumes bit-exact on one process above. The other 7 (all passed: 75-85 s each
# on CI's machine, 3.5-14 min under a load of ~18) are extended: CI's 45 minutes do not hold them all.
IN_CI = {("passed", "episode")}
DDP_CASES = [
    pytest.param(
        mode,
        step,
        marks=[]
        if (mode, step) in IN_CI
        else pytest.mark.extended("passed/episode runs in CI; every mode resumes bit-exact on one process"),
    )
    for mode in MODES
    for step in STEP_MODES
]


@pytest.mark.slow
@pytest.mark.parametrize(("mode", "step"), DDP_CASES)
def test_ddp_resume_is_bit_exact(tmp_path, mode, step):
    per_episode, extra = STEP_MODES[step]
    args = ["trainer.strategy=ddp", *mode_args(mode), *extra]
    fit_2_ranks(tmp_path / "straight", *args, f"trainer.max_steps={4 * per_episode}")
    fit_2_ranks(tmp_path / "split", *args, f"trainer.max_steps={2 * per_episode}")
    fit_2_ranks(tmp_path / "split", *args, f"trainer.max_steps={4 * per_episode}", "run.resume=auto")
    a = load_ckpt(tmp_path / "straight/checkpoints/last.ckpt")
    b = load_ckpt(tmp_path / "split/checkpoints/last.ckpt")
    assert_mode_state_is_live(a, mode)
    assert len(a["initial_state"]) == 2  # each rank's own rows, gathered
    if mode == "passed":
        assert not torch.equal(a["initial_state"][0]["carried"][0][1], a["initial_state"][1]["carried"][0][1])
    assert_same_end(a, b)


@pytest.mark.slow
def test_passed_under_deepspeed_zero2_equals_ddp(tmp_path):
    from tests.training.common import scalars

    args = ["optim.initial_state=passed", "trainer.max_steps=9"]
    fit_2_ranks(tmp_path / "ddp", "trainer.strategy=ddp", *args)
    fit_2_ranks(tmp_path / "ds", "--deepspeed-cpu", "trainer.strategy=deepspeed", "trainer.deepspeed.stage=2", *args)
    a, b = scalars(tmp_path / "ds", "loss_segment/"), scalars(tmp_path / "ddp", "loss_segment/")
    assert a.keys() == b.keys() and len(a) == 3
    for tag in a:
        assert a[tag].keys() == b[tag].keys() and len(a[tag]) == 3
        for step in a[tag]:
            assert abs(a[tag][step] - b[tag][step]) <= 1e-5 * abs(b[tag][step]), (tag, step)


@pytest.mark.slow
@pytest.mark.parametrize(
    "mode",
    [
        pytest.param(
            mode, marks=pytest.mark.extended("a group's ranks share one data rank, so one h_0: CI's 45 minutes")
        )
        for mode in ("passed", "noise")
    ],
)
def test_context_parallel_ranks_start_from_the_same_state(tmp_path, mode):
    """2 ranks sharing each row (trainer.context_parallel=2) train as 1 rank holding it: the group's ranks
    share a data rank, so they carry the same final state and draw the same noise (the first one reads it)."""
    from tests.training.common import scalars

    args = [*mode_args(mode), "trainer.max_steps=9"]
    fit_2_ranks(tmp_path / "one", *args, "trainer.devices=1")
    fit_2_ranks(tmp_path / "cp2", *args, "trainer.context_parallel=2")
    a, b = scalars(tmp_path / "cp2", "loss_segment/"), scalars(tmp_path / "one", "loss_segment/")
    assert a.keys() == b.keys() and len(a) == 3
    worst = max(abs(a[t][s] - b[t][s]) / abs(b[t][s]) for t in b for s in b[t])
    assert worst < 1e-5, worst
