import math

import pytest
import torch

from stuffed_mamba.model import Intervention
from stuffed_mamba.probes.retention import first_token_retention, retention_summary, summary_points
from tests.helpers import rel_err

from .conftest import make_tiny_lm


def _constant_delta(model, dt_bias, A_log):
    """Zero the Delta rows of in_proj so that Delta_t = softplus(dt_bias) whatever the input."""
    c = model.config
    with torch.no_grad():
        for block in model.backbone.layers:
            m = block.mixer
            m.in_proj.weight[c.d_inner + c.conv_dim :].zero_()
            m.dt_bias.copy_(dt_bias)
            m.A_log.copy_(A_log)
    return model


@pytest.mark.parametrize("chunk", [37, 4096])
def test_retention_equals_closed_form_for_constant_delta(chunk):
    model = make_tiny_lm()
    H = model.config.nheads
    dt_bias = torch.linspace(-6, 1, H)
    A_log = torch.linspace(-3, 0.5, H)
    _constant_delta(model, dt_bias, A_log)
    T = 300
    ids = torch.randint(0, 256, (2, T), generator=torch.Generator().manual_seed(0))
    alpha = first_token_retention(model, ids, chunk_size=chunk)
    assert alpha.shape == (model.config.n_layer, H, T) and alpha.dtype == torch.float32
    t = torch.arange(1, T + 1, dtype=torch.float64)
    closed = torch.exp(-t[None, :] * (torch.nn.functional.softplus(dt_bias.double()) * A_log.double().exp())[:, None])
    for layer in alpha:
        assert rel_err(layer, closed) < 1e-5
    # j = 1 is included (eq. 6): alpha_{1:1} = alpha_1 < 1
    assert (alpha[:, :, 0] < 1).all()


def test_retention_follows_intervention_longmamba():
    """LongMamba halves Delta: with constant Delta, alpha_{1:t} becomes its square root."""
    model = make_tiny_lm()
    H = model.config.nheads
    model = _constant_delta(model, torch.full((H,), -1.0), torch.zeros(H))
    ids = torch.randint(0, 256, (1, 64), generator=torch.Generator().manual_seed(0))
    base = first_token_retention(model, ids)
    model.set_intervention(Intervention(dt_scale=0.5))
    half = first_token_retention(model, ids)
    assert rel_err(half, base.sqrt()) < 1e-5


def test_retention_is_chunk_invariant_and_batch_averaged(tiny_lm):
    ids = torch.randint(0, 256, (3, 200), generator=torch.Generator().manual_seed(2))
    whole = first_token_retention(tiny_lm, ids, chunk_size=4096)
    assert rel_err(first_token_retention(tiny_lm, ids, chunk_size=29), whole) < 1e-5
    rows = torch.stack([first_token_retention(tiny_lm, ids[i : i + 1]) for i in range(3)]).mean(0)
    assert rel_err(whole, rows) < 1e-5
    assert (whole[:, :, 1:] <= whole[:, :, :-1] * (1 + 1e-6)).all()  # retention never grows


def test_retention_leaves_no_hooks(tiny_lm):
    ids = torch.zeros(1, 8, dtype=torch.long)
    first_token_retention(tiny_lm, ids)
    assert all(not b.mixer._forward_pre_hooks for b in tiny_lm.backbone.layers)


def test_retention_summary_counts_heads():
    L, H, T = 2, 4, 16
    alpha = torch.zeros(L, H, T)
    alpha[0, 0] = 0.995  # keeps the first token
    alpha[1, 2] = 0.95
    alpha[1, 3, :8] = 0.6
    s = retention_summary(alpha, train_length=8)
    assert summary_points(16, 8) == [8, 16]
    at8, at16 = s["at"]["t=8"], s["at"]["t=16"]
    assert at8["heads_above"] == {"0.5": 3, "0.9": 2, "0.99": 1}
    assert at16["heads_above"] == {"0.5": 2, "0.9": 2, "0.99": 1}
    assert math.isclose(at8["max"], 0.995, rel_tol=1e-6) and at8["argmax_layer_head"] == [0, 0]
