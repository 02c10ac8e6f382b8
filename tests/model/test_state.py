"""Exact state: whole sequence == uneven pieces passing the state == token-by-token `step`."""

import torch

from stuffed_mamba.model import ModelState
from tests.helpers import rel_err


def _assert_states_close(s, ref, tol):
    for a, b in zip(s.layers, ref.layers, strict=True):
        assert rel_err(a.conv, b.conv) < tol
        assert rel_err(a.ssm, b.ssm) < tol


def test_whole_vs_pieces_vs_step(tiny_model):
    ids = torch.randint(0, 100, (2, 71))  # 71: not a multiple of chunk_size=16
    with torch.no_grad():
        whole = tiny_model(ids)
        state, logits = None, []
        for a, b in [(0, 1), (1, 3), (3, 20), (20, 53), (53, 71)]:  # pieces shorter than d_conv too
            out = tiny_model(ids[:, a:b], state=state)
            state = out.state
            logits.append(out.logits)
        assert rel_err(torch.cat(logits, 1), whole.logits) < 1e-5
        _assert_states_close(state, whole.state, 1e-5)

        state, logits = tiny_model.init_state(2), []
        for t in range(ids.shape[1]):
            lt, state = tiny_model.step(ids[:, t], state)
            logits.append(lt)
        assert rel_err(torch.stack(logits, 1), whole.logits) < 1e-5
        _assert_states_close(state, whole.state, 1e-5)


def test_conv_state_is_carried(tiny_model):
    """Dropping the conv state (as the authors' analysis code did) changes the next logits."""
    ids = torch.randint(0, 100, (1, 40))
    with torch.no_grad():
        first = tiny_model(ids[:, :20])
        keep = tiny_model(ids[:, 20:], state=first.state).logits
        no_conv = ModelState([type(l)(torch.zeros_like(l.conv), l.ssm) for l in first.state.layers])
        dropped = tiny_model(ids[:, 20:], state=no_conv).logits
        whole = tiny_model(ids).logits[:, 20:]
    assert rel_err(keep, whole) < 1e-5
    assert rel_err(dropped, whole) > 1e-3


def test_gradients_through_a_passed_state_equal_whole_sequence(tiny_model):
    ids = torch.randint(0, 100, (2, 50))
    labels = torch.randint(0, 100, (2, 50))
    tiny_model(ids, labels=labels).loss.backward()
    ref = {n: p.grad.clone() for n, p in tiny_model.named_parameters()}
    tiny_model.zero_grad()
    o1 = tiny_model(ids[:, :23], labels=labels[:, :23])
    o2 = tiny_model(ids[:, 23:], state=o1.state, labels=labels[:, 23:])  # not detached
    ((o1.loss * 23 + o2.loss * 27) / 50).backward()
    for n, p in tiny_model.named_parameters():
        assert rel_err(p.grad, ref[n]) < 1e-4, n


def test_state_helpers(tiny_model):
    s = tiny_model.init_state(3)
    assert s.batch_size == 3
    assert s.layers[0].conv.shape == (3, tiny_model.config.conv_dim, 3)
    assert s.layers[0].ssm.shape == (3, 8, 8, 8) and s.layers[0].ssm.dtype == torch.float32
    s16 = s.to(dtype=torch.bfloat16)
    assert s16.layers[0].conv.dtype == torch.bfloat16 and s16.layers[0].ssm.dtype == torch.float32
    x = torch.ones(1, requires_grad=True)
    d = s.map(lambda t: t + x).detach()
    assert not d.layers[0].ssm.requires_grad
    assert torch.equal(s.select(slice(0, 1)).layers[1].ssm, s.layers[1].ssm[:1])
