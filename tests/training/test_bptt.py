"""backward_episode (issue 12): `full` is the exact gradient of the whole S*T sequence, `truncated`
is the detached-state loop, and the two differ (the gradient really flows through the state)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from stuffed_mamba.model import Mamba2Config, Mamba2LM
from stuffed_mamba.training.bptt import backward_episode
from tests.helpers import TINY_ARCH, rel_err
from tests.training.common import tiny_model

B, S, T = 2, 3, 21  # T is not a multiple of the chunk size (16)
CONFIG = {**TINY_ARCH, "ngroups": 2, "vocab_size": 50}


def episode_model(backend: str = "torch", **kw) -> Mamba2LM:
    torch.manual_seed(0)
    model = Mamba2LM(Mamba2Config(**{**CONFIG, **kw}), backend=backend)
    with torch.no_grad():  # slow decay (A near 0) so the state matters across a whole segment
        for block in model.backbone.layers:
            block.mixer.A_log.fill_(-3.0)
    return model


def episode(batch: int = B, segments: int = S, length: int = T, vocab: int = 50, seed: int = 1):
    """inputs, labels [batch, segments, length] of one random token stream per row."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (batch, segments * length + 1), generator=g)
    shape = (batch, segments, length)
    return ids[:, :-1].reshape(shape), ids[:, 1:].reshape(shape)


def grads_of(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() for n, p in model.named_parameters()}


def whole_sequence_grads(model, inputs, labels):
    """The reference: one forward/backward over B x (S*T) tokens, no state passed anywhere."""
    model.zero_grad(set_to_none=True)
    loss = model(inputs.flatten(1), labels=labels.flatten(1)).loss
    loss.backward()
    return loss.detach(), grads_of(model)


def episode_grads(model, inputs, labels, mode, **kw):
    model.zero_grad(set_to_none=True)
    losses = backward_episode(model, inputs, labels, mode=mode, **kw)
    return losses, grads_of(model)


def assert_grads_close(got, want, tol):
    errors = {n: rel_err(got[n], want[n]) for n in want}
    worst = max(errors, key=errors.get)
    assert errors[worst] < tol, f"{worst}: rel err {errors[worst]:.2e}"


@pytest.mark.parametrize("checkpointing", [False, True])
def test_full_equals_one_backward_over_the_whole_sequence(checkpointing):
    model = episode_model()
    model.gradient_checkpointing = checkpointing
    inputs, labels = episode()
    whole_loss, want = whole_sequence_grads(model, inputs, labels)
    losses, got = episode_grads(model, inputs, labels, "full")
    assert losses.shape == (S,) and not losses.requires_grad
    assert rel_err(losses.mean(), whole_loss) < 1e-5  # equal segments: the mean of means is the mean
    assert_grads_close(got, want, 1e-5)


def test_truncated_equals_the_detached_loop_exactly():
    model = episode_model()
    inputs, labels = episode()
    model.zero_grad(set_to_none=True)
    state, want_losses = None, []
    for s in range(S):
        out = model(inputs[:, s], state=state, labels=labels[:, s])
        (out.loss / S).backward()
        want_losses.append(out.loss.detach())
        state = out.state.detach()
    want = grads_of(model)
    losses, got = episode_grads(model, inputs, labels, "truncated")
    assert torch.equal(losses, torch.stack(want_losses))
    for n in want:
        assert torch.equal(got[n], want[n]), n


def test_the_two_modes_differ():
    """The tests above can fail: truncated misses the gradient through the state, and by more
    than rounding (the segment losses themselves are the same in both modes)."""
    model = episode_model()
    inputs, labels = episode()
    full_losses, full = episode_grads(model, inputs, labels, "full")
    trunc_losses, trunc = episode_grads(model, inputs, labels, "truncated")
    assert rel_err(full_losses, trunc_losses) < 1e-6
    assert max(rel_err(trunc[n], full[n]) for n in full) > 1e-2


def test_backward_calls_and_last_flag():
    """S backwards, `last` only at the final one (DDP's all-reduce, DeepSpeed's boundary), in
    both modes; the injected backward is what accumulates the gradient, and one that scales what
    it back-propagates (loss scaling) scales the gradient by just that."""
    model = episode_model()
    inputs, labels = episode()
    for mode in ("full", "truncated"):
        calls = []

        def backward(tensors, grad_tensors, *, last, calls=calls):
            calls.append(last)
            torch.autograd.backward(
                tensors,
                [torch.full_like(t, 2.0) if g is None else 2 * g for t, g in zip(tensors, grad_tensors, strict=True)],
            )

        model.zero_grad(set_to_none=True)
        backward_episode(model, inputs, labels, mode=mode, backward=backward)
        doubled = grads_of(model)
        _, plain = episode_grads(model, inputs, labels, mode)
        assert calls == [False] * (S - 1) + [True], mode
        assert_grads_close({n: g / 2 for n, g in doubled.items()}, plain, 1e-6)  # not 2**S


def test_scale_and_final_state():
    """scale=1 back-propagates the sum of the segment losses; the state returned is the end of
    the episode (the initial state of a next one), the same in both modes."""
    model = episode_model()
    inputs, labels = episode()
    _, mean = episode_grads(model, inputs, labels, "full")
    states = {}
    for mode in ("full", "truncated"):
        model.zero_grad(set_to_none=True)
        losses, states[mode] = backward_episode(model, inputs, labels, mode=mode, scale=1.0, return_state=True)
    assert_grads_close(
        {n: g / S for n, g in grads_of(model).items()}, episode_grads(model, inputs, labels, "truncated")[1], 1e-5
    )
    with torch.no_grad():
        want = model(inputs.flatten(1)).state
    for mode, state in states.items():
        for got, ref in zip(state.layers, want.layers, strict=True):
            assert (
                not got.ssm.requires_grad and rel_err(got.ssm, ref.ssm) < 1e-5 and rel_err(got.conv, ref.conv) < 1e-6
            ), mode
    model.zero_grad(set_to_none=True)
    backward_episode(model, inputs, labels, mode="full", scale=1.0)
    assert_grads_close({n: g / S for n, g in grads_of(model).items()}, mean, 1e-5)


def test_a_non_finite_loss_poisons_the_gradient_and_keeps_the_calls():
    """Another rank saw a NaN: every rank still runs its backward calls (`last` once, at the
    end) and its gradient is NaN, so the trainer's non-finite check skips the step everywhere."""
    model = episode_model()
    inputs, labels = episode()
    for mode, want_calls in (("full", [True]), ("truncated", [False] * (S - 1) + [True])):
        calls = []

        def backward(tensors, grad_tensors, *, last, calls=calls):
            calls.append(last)
            torch.autograd.backward(tensors, grad_tensors)

        model.zero_grad(set_to_none=True)
        losses = backward_episode(model, inputs, labels, mode=mode, all_finite=lambda losses: False, backward=backward)
        assert calls == want_calls and losses.shape == (S,) and torch.isfinite(losses).all(), mode
        assert all(torch.isnan(p.grad).all() for p in model.parameters()), mode


def test_full_memory_is_one_segment_graph():
    """Saved activations alive at each backward are those of one segment, whatever S: the graphs
    of the other segments do not exist (only the S boundary states do)."""
    model = episode_model()
    live, peaks = [0], []

    def pack(t):
        live[0] += 1
        return _Counted(t, live)

    def backward(tensors, grad_tensors, *, last):
        peaks.append(live[0])
        torch.autograd.backward(tensors, grad_tensors)

    with torch.autograd.graph.saved_tensors_hooks(pack, _Counted.unpack):
        for segments in (3, 7):
            inputs = torch.randint(0, 50, (B, segments, T))
            backward_episode(model, inputs, inputs, mode="full", backward=backward)
    assert len(peaks) == 3 + 7 and peaks[0] > 0
    assert max(peaks[3:]) == max(peaks[:3])  # 7 segments peak where 3 do
    assert live[0] == 0


class _Counted:
    def __init__(self, t, live):
        self.t, self.live = t, live

    def __del__(self):
        self.live[0] -= 1

    @staticmethod
    def unpack(box):
        return box.t


def test_bad_mode_and_shapes_are_errors():
    model = episode_model()
    inputs, labels = episode()
    with pytest.raises(ValueError, match="mode must be one of truncated, full"):
        backward_episode(model, inputs, labels, mode="exact")
    with pytest.raises(ValueError, match=r"\[B, S, T\]"):
        backward_episode(model, inputs[:, 0], labels[:, 0])


def _global_batch_fit(out, devices: int, bptt: str = "full"):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "LOCAL_RANK", "WORLD_SIZE", "RANK"))}
    env["OMP_NUM_THREADS"] = "1"
    r = subprocess.run(
        [sys.executable, "-m", "tests.scripts.global_batch_fit", str(out), "--devices", str(devices), "--bptt", bptt],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    return torch.load(out / "weights.pt")


@pytest.mark.slow  # two DDP processes + one: ~1 min of CPU
@pytest.mark.extended(
    "DDP under full BPTT runs in CI as DeepSpeed's full-BPTT reference (one all-reduce per episode), "
    "and 2 ranks = 1 rank under full BPTT in the context-parallel test"
)
def test_full_under_ddp_equals_one_rank_with_one_allreduce_per_episode(tmp_path):
    """Acceptance 3: 2 ranks x 2 rows = 1 rank x 4 rows, 3 episodes of full BPTT; the S backwards of
    an episode all-reduce once (the first S-1 under `no_sync`), counted by a DDP comm hook."""
    one = _global_batch_fit(tmp_path / "one", 1)
    two = _global_batch_fit(tmp_path / "two", 2)
    start = tiny_model().state_dict()
    for n in one:
        assert not torch.equal(one[n], start[n]) or n.endswith("D"), n  # trained
        assert rel_err(two[n], one[n]) < 1e-5, n
    counts = [(tmp_path / f"two/allreduce_rank{r}.txt").read_text().split() for r in range(2)]
    assert counts[0] == counts[1] == ["1", "1", "1"]
