"""Truncated BPTT (appendix F): per-segment gradients from the detached carried state, resets at
episode boundaries, and no growth of the autograd graph across segments."""

from __future__ import annotations

import copy

import pytest
import torch

from tests.helpers import rel_err
from tests.training.common import bare_trainer, tiny_module
from tests.training.fakes import FakeEpisodeLoader

S, T, B = 3, 16, 2


class Recorder:
    """Wraps the module: what each segment's forward got, and the parameters + gradients at each
    optimiser step (gradients before clipping)."""

    def __init__(self, module):
        self.calls, self.steps = [], []
        model = module.model
        forward = model.forward

        def recording_forward(input_ids, state=None, labels=None):
            self.calls.append(
                dict(
                    input_ids=input_ids.clone(),
                    labels=None if labels is None else labels.clone(),
                    state=None if state is None else copy.deepcopy(state),
                    state_has_graph=state is not None
                    and any(t.requires_grad for layer in state.layers for t in (layer.conv, layer.ssm)),
                )
            )
            return forward(input_ids, state=state, labels=labels)

        model.forward = recording_forward
        clip = module._clip_gradients

        def recording_clip():
            self.steps.append(
                dict(
                    params={n: p.detach().clone() for n, p in model.named_parameters()},
                    grads={n: p.grad.detach().clone() for n, p in model.named_parameters()},
                )
            )
            return clip()

        module._clip_gradients = recording_clip


def fresh_copy(model, params):
    ref = type(model)(model.config)
    with torch.no_grad():
        for n, p in ref.named_parameters():
            p.copy_(params[n])
    return ref


def hand_grads(module, params, call, carried_state):
    """d loss_s / d theta at theta = params, from `carried_state` treated as a constant."""
    ref = fresh_copy(module.model, params)
    loss = ref(call["input_ids"], state=carried_state, labels=call["labels"]).loss
    ref.zero_grad()
    loss.backward()
    return {n: p.grad for n, p in ref.named_parameters()}, ref


@pytest.fixture(scope="module")
def recorded_run():
    torch.manual_seed(0)
    module = tiny_module()
    rec = Recorder(module)
    bare_trainer(max_steps=2 * S).fit(
        module, train_dataloaders=FakeEpisodeLoader(batch_size=B, segments=S, train_length=T)
    )
    return module, rec


def test_segment_gradient_equals_hand_gradient_from_detached_state(recorded_run):
    module, rec = recorded_run
    assert len(rec.calls) == len(rec.steps) == 2 * S  # one optimiser step per segment
    carried = None
    for k, (call, step) in enumerate(zip(rec.calls, rec.steps, strict=True)):
        if k % S == 0:
            carried = None  # an episode starts from zeros
        grads, ref = hand_grads(module, step["params"], call, carried)
        for name, g in grads.items():
            assert rel_err(step["grads"][name], g) < 1e-5, (k, name)
        # the state passed on is the end state of this segment under the same weights
        with torch.no_grad():
            carried = ref(call["input_ids"], state=carried).state


def test_carried_state_is_the_previous_segments_end_state_detached(recorded_run):
    module, rec = recorded_run
    for k, call in enumerate(rec.calls):
        if k % S == 0:
            assert call["state"] is None, "the state must reset at every episode boundary"
        else:
            assert call["state"] is not None
            assert not call["state_has_graph"], "the carried state must be detached"


def test_gradient_through_the_previous_segment_would_differ(recorded_run):
    """The test above can fail: letting the gradient flow into segment s-1 changes it."""
    module, rec = recorded_run
    s = 1
    prev, call, step = rec.calls[s - 1], rec.calls[s], rec.steps[s]
    ref = fresh_copy(module.model, step["params"])
    state = ref(prev["input_ids"]).state  # not detached
    ref(call["input_ids"], state=state, labels=call["labels"]).loss.backward()
    diffs = [rel_err(step["grads"][n], p.grad) for n, p in ref.named_parameters()]
    assert max(diffs) > 1e-3


def test_episode_mode_steps_once_with_the_mean_of_segment_gradients():
    module = tiny_module(optimizer_step="episode")
    rec = Recorder(module)
    bare_trainer(max_steps=1).fit(module, train_dataloaders=FakeEpisodeLoader(batch_size=B, segments=S, train_length=T))
    assert len(rec.calls) == S and len(rec.steps) == 1
    params = rec.steps[0]["params"]  # weights do not change inside the episode
    total, carried = None, None
    for call in rec.calls:
        grads, ref = hand_grads(module, params, call, carried)
        total = grads if total is None else {n: total[n] + g for n, g in grads.items()}
        with torch.no_grad():
            carried = ref(call["input_ids"], state=carried).state
    for name, g in total.items():
        assert rel_err(rec.steps[0]["grads"][name], g / S) < 1e-5, name


class SavedTensorMeter:
    """Counts the tensors autograd keeps for backward that are still alive."""

    def __init__(self):
        self.live = 0

    def pack(self, t):
        meter = self

        class Box:
            def __init__(self):
                meter.live += 1

            def __del__(self):
                meter.live -= 1

        box = Box()
        box.t = t
        return box

    @staticmethod
    def unpack(box):
        return box.t


def test_graph_of_earlier_segments_is_freed():
    """Saved activations alive after each segment's forward are the same for every segment, and
    zero after each backward: memory does not grow with the number of segments."""
    module = tiny_module()
    meter = SavedTensorMeter()
    after_forward = []
    forward = module.model.forward

    def metered_forward(*a, **kw):
        out = forward(*a, **kw)
        after_forward.append(meter.live)
        return out

    module.model.forward = metered_forward
    after_step = []
    step = module._optimizer_step

    def metered_step(opt):
        after_step.append(meter.live)
        step(opt)

    module._optimizer_step = metered_step
    with torch.autograd.graph.saved_tensors_hooks(meter.pack, meter.unpack):
        bare_trainer(max_steps=6).fit(
            module, train_dataloaders=FakeEpisodeLoader(batch_size=B, segments=6, train_length=T)
        )
    assert len(after_forward) == 6
    assert after_forward[0] > 0
    assert min(after_forward) == max(after_forward)
    assert after_step == [0] * 6
