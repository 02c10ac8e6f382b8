import pytest
import torch

from stuffed_mamba.probes.prefill import prefill
from stuffed_mamba.probes.states import (
    StateStats,
    newlines_prompt,
    outlier_channels,
    state_statistics,
    state_summary,
    time_points,
)
from tests.helpers import rel_err


def test_newlines_prompt(byte_tok, bpe_tok):
    ids = newlines_prompt(byte_tok, 50)
    assert ids.shape == (1, 50) and (ids == 10).all()
    assert byte_tok.decode(ids[0].tolist()) == "\n" * 50
    assert bpe_tok.decode(newlines_prompt(bpe_tok, 5)[0].tolist()) == "\n" * 5


def test_time_points_include_train_length():
    pts = time_points(1000, 8, 300)
    assert pts[-1] == 1000 and 300 in pts and len(pts) == 9 and pts == sorted(set(pts))


@pytest.mark.parametrize("chunk", [11, 4096])
def test_prefill_state_equals_forward_state(tiny_lm, chunk):
    ids = torch.randint(0, 256, (2, 100), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = tiny_lm(ids).state
    got = prefill(tiny_lm, ids, chunk_size=chunk)
    for a, b in zip(got.layers, ref.layers, strict=True):
        assert rel_err(a.ssm, b.ssm) < 1e-5 and rel_err(a.conv, b.conv) < 1e-5


def test_state_statistics_match_states_at_each_point(tiny_lm, byte_tok):
    ids = newlines_prompt(byte_tok, 90)
    pts = [10, 45, 90]
    stats = state_statistics(tiny_lm, ids, pts, max_chunk=16)
    assert stats.t == pts and stats.mean.shape == (2, tiny_lm.config.nheads, 3) and stats.complete
    for k, t in enumerate(pts):
        with torch.no_grad():
            st = tiny_lm(ids[:, :t]).state
        for l, layer in enumerate(st.layers):
            h = layer.ssm[0]  # [H, P, N]
            assert rel_err(stats.mean[l, :, k], h.mean(dim=(1, 2))) < 1e-4
            assert rel_err(stats.var[l, :, k], h.var(dim=(1, 2), unbiased=False)) < 1e-4
            assert rel_err(stats.conv_var[l, k], layer.conv.var(unbiased=False)) < 1e-4
    assert rel_err(stats.last_ssm, torch.stack([x.ssm[0] for x in st.layers])) < 1e-5


def test_outlier_channels_find_planted_outliers():
    g = torch.Generator().manual_seed(0)
    h = 0.01 * torch.randn(16, 32, generator=g)
    for p, n in [(3, 7), (10, 1), (15, 31)]:
        h[p, n] = 5.0
    out = outlier_channels(h, top_k=3, share_of=0.01)
    assert {(c["p"], c["n"]) for c in out["top"]} == {(3, 7), (10, 1), (15, 31)}
    assert out["share_of_sq_deviation"] > 0.99
    plain = outlier_channels(torch.randn(16, 32, generator=g), share_of=0.01)
    assert plain["share_of_sq_deviation"] < 0.2


def test_state_summary_growth_past_train_length():
    L, H = 2, 3
    t = [50, 100, 150, 200]
    var = torch.ones(L, H, 4)
    var[1, 2, 2:] = torch.tensor([7.0, 30.0])  # explodes past T_train = 100
    mean = torch.full((L, H, 4), 0.5)
    stats = StateStats(t, mean, var, torch.ones(L, 4), torch.ones(L, 4), torch.randn(L, H, 4, 8))
    s = state_summary(stats, 100)
    assert s["var_growth_max"] == pytest.approx(30.0) and s["mean_growth_max"] == pytest.approx(1.0)
    assert s["outliers"][0]["layer"] == 1 and s["outliers"][0]["head"] == 2
    assert s["heads_var_growth_over_2"] == 1
    assert state_summary(stats, 200)["var_growth_max"] is None  # nothing measured past T_train
