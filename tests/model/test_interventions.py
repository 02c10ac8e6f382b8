"""Interventions (section 3.2.2, appendix C) against explicit per-step recurrences."""

import pytest
import torch

from stuffed_mamba.model import Intervention
from tests.helpers import rel_err


def _mixer_out_from_y(mixer, y, x, z):
    """The mixer's tail (skip D, gated norm, out_proj) applied to scan outputs y [B,T,H,P]."""
    c = mixer.config
    y = y + x * mixer.D[:, None]
    y = mixer.ops.gated_rmsnorm(
        y.reshape(*y.shape[:2], c.d_inner), z, mixer.norm.weight, eps=mixer.norm.eps, group_size=mixer.norm.group_size
    )
    return mixer.out_proj(y)


def _recurrence(x, Delta, A, B, C, alpha_scale=1.0, window=None):
    """y_t = C_t h_t with h_t = sum_{i in window} (prod_{j=i+1..t} s*alpha_j) B_i Delta_i x_i, evaluated
    literally per position from zero state over [max(0, t-w+1), t] (no differences, no cumsums)."""
    b, T, h, p = x.shape
    g = B.shape[2]
    Bh, Ch = B.repeat_interleave(h // g, 2), C.repeat_interleave(h // g, 2)
    ys = []
    for t in range(T):
        lo = 0 if window is None else max(0, t - window + 1)
        state = torch.zeros(b, h, p, B.shape[-1], dtype=torch.float64)
        for i in range(lo, t + 1):
            alpha = alpha_scale * torch.exp(Delta[:, i].double() * A.double())
            state = alpha[..., None, None] * state + torch.einsum(
                "bh,bhp,bhn->bhpn", Delta[:, i].double(), x[:, i].double(), Bh[:, i].double()
            )
        ys.append(torch.einsum("bhpn,bhn->bhp", state, Ch[:, t].double()))
    return torch.stack(ys, 1).float()


def _mixer_and_input(tiny_model, T=23):
    mixer = tiny_model.backbone.layers[1].mixer
    u = torch.randn(2, T, tiny_model.config.d_model)
    return mixer, u


def test_identity_factors_change_nothing(tiny_model):
    ids = torch.randint(0, 100, (2, 30))
    with torch.no_grad():
        ref = tiny_model(ids).logits
        tiny_model.set_intervention(Intervention(dt_scale=1.0, alpha_scale=1.0, b_scale=1.0))
        assert tiny_model.intervention is None  # all-identity is no intervention
        assert torch.equal(tiny_model(ids).logits, ref)


@pytest.mark.parametrize("iv", [Intervention(alpha_scale=0.9, b_scale=0.75), Intervention(dt_scale=0.5)])
def test_rri_and_longmamba_equal_the_modified_recurrence(tiny_model, iv):
    mixer, u = _mixer_and_input(tiny_model)
    with torch.no_grad():
        ins = mixer.ssm_inputs(u)  # no intervention yet: the original Delta, B
        Delta = ins["Delta"] * iv.dt_scale
        y = _recurrence(ins["x"], Delta, ins["A"], ins["B"] * iv.b_scale, ins["C"], alpha_scale=iv.alpha_scale)
        expected = _mixer_out_from_y(mixer, y, ins["x"], ins["z"])
        mixer.intervention = iv
        out, _ = mixer(u)
    assert rel_err(out, expected) < 1e-4


@pytest.mark.parametrize("w", [1, 5, 16])
def test_window_equals_a_scan_over_only_the_last_w_positions(tiny_model, w):
    mixer, u = _mixer_and_input(tiny_model, T=23)
    with torch.no_grad():
        ins = mixer.ssm_inputs(u)
        y = _recurrence(ins["x"], ins["Delta"], ins["A"], ins["B"], ins["C"], window=w)
        expected = _mixer_out_from_y(mixer, y, ins["x"], ins["z"])
        mixer.intervention = Intervention(window=w)
        out, _ = mixer(u)
    assert rel_err(out, expected) < 1e-4


def test_window_is_exact_in_pieces_and_by_step(tiny_model):
    ids = torch.randint(0, 100, (2, 40))
    tiny_model.set_intervention(Intervention(window=7, alpha_scale=0.95))
    with torch.no_grad():
        whole = tiny_model(ids).logits
        state, pieces = None, []
        for a, b in [(0, 3), (3, 12), (12, 40)]:
            out = tiny_model(ids[:, a:b], state=state)
            state, _ = out.state, pieces.append(out.logits)
        assert rel_err(torch.cat(pieces, 1), whole) < 1e-5
        state, steps = tiny_model.init_state(2), []
        for t in range(40):
            lt, state = tiny_model.step(ids[:, t], state)
            steps.append(lt)
        assert rel_err(torch.stack(steps, 1), whole) < 1e-5


def test_window_sum_is_of_Delta_not_a_product_of_alphas(tiny_model):
    """With alpha_t ~ 0 (Delta huge), a ratio of running products alpha_{1:t} / alpha_{1:t-w} is 0/0 = NaN;
    exp(A * summed Delta) stays exact. And when every step forgets everything, the window changes nothing."""
    mixer, u = _mixer_and_input(tiny_model, T=30)
    with torch.no_grad():
        mixer.dt_bias.fill_(50.0)  # alpha = exp(-50 * exp(A_log)) ~ 0: every step forgets everything
        ref, _ = mixer(u)
        mixer.intervention = Intervention(window=4)
        out, _ = mixer(u)
    assert torch.isfinite(out).all()
    assert rel_err(out, ref) < 1e-5


def test_parse_cli_specs():
    assert Intervention.parse("rri") == Intervention(alpha_scale=0.9999, b_scale=0.75)
    assert Intervention.parse("longmamba:0.5") == Intervention(dt_scale=0.5)
    assert Intervention.parse("window:4096") == Intervention(window=4096)
    assert Intervention.parse("none") is None
    with pytest.raises(ValueError, match="unknown intervention"):
        Intervention.parse("forget-everything")
    with pytest.raises(ValueError, match="alpha_scale"):
        Intervention(alpha_scale=1.5)
