"""The section-5 laws: fits recover known parameters from noisy data; the paper's fits predict its numbers."""

import numpy as np
import pytest
import torch

from stuffed_mamba.analysis import (
    PAPER_T_FORGET,
    PAPER_T_RECALL,
    fit_exponential,
    fit_linear,
    forget_threshold_warning,
    predicted_thresholds,
)
from tests.helpers import rel_err


def re(a, b) -> float:
    return rel_err(torch.tensor(float(a)), torch.tensor(float(b)))


def test_linear_fit_recovers_parameters_from_noisy_data():
    rng = np.random.default_rng(1)
    x = np.linspace(0.5, 13.0, 12)  # N_S, M floats
    y = 5.172 * x - 4.469 + rng.normal(0, 0.5, x.size)  # T_forget, K tokens
    law = fit_linear(x, y)
    a_se, b_se = law.stderr()
    assert re(law.a, 5.172) < 0.02
    assert abs(law.a - 5.172) < 3 * a_se and abs(law.b + 4.469) < 3 * b_se
    assert law.r2 > 0.99 and law.n == 12
    # the 95% band of the mean covers the true line, and is narrower in the middle of the data
    xs = np.array([1.0, 6.5, 12.0])
    lo, hi = law.band(xs)
    truth = 5.172 * xs - 4.469
    assert np.all(lo <= truth) and np.all(truth <= hi)
    assert (hi - lo)[1] < (hi - lo)[0] and (hi - lo)[1] < (hi - lo)[2]


def test_linear_fit_is_exact_without_noise():
    x = np.array([1.0, 2.0, 5.0])
    law = fit_linear(x, 3.0 * x + 2.0)
    assert re(law.a, 3.0) < 1e-12 and re(law.b, 2.0) < 1e-12 and law.r2 == pytest.approx(1.0)


def test_exponential_fit_recovers_parameters_from_noisy_data():
    rng = np.random.default_rng(2)
    x = np.linspace(1.0, 14.0, 10)
    truth = 4.756 * (1.365**x - 1) - 0.742
    y = truth + rng.normal(0, 2.0, x.size)  # 2K tokens of noise on T_recall up to ~370K
    law = fit_exponential(x, y)
    assert re(law.c, 1.365) < 0.02
    # a and c trade off against each other; each lies within 3 standard errors of the truth
    for got, true, se in zip(law.params, (4.756, 1.365, -0.742), law.stderr(), strict=True):
        assert abs(got - true) < 3 * se
    assert re(law.a, 4.756) < 0.2
    assert law.r2 > 0.99
    lo, hi = law.band(x)
    assert np.all(np.isfinite(lo)) and np.mean((lo <= truth) & (truth <= hi)) >= 0.7


def test_exponential_fit_far_from_the_papers_scale():
    # a miniature-scale law (N_S in K floats, T in tokens): the grid start must find it too
    x = np.array([2.0, 5.0, 9.0, 17.0, 33.0])
    y = 20.0 * (1.08**x - 1) + 50.0
    law = fit_exponential(x, y, x_unit=1e3, y_unit=1.0)
    assert re(law.c, 1.08) < 1e-6 and re(law.a, 20.0) < 1e-4 and re(law.b, 50.0) < 1e-4
    assert re(law.tokens(17_000), 20.0 * (1.08**17 - 1) + 50.0) < 1e-6


def test_three_points_fit_exactly_but_have_no_band():
    x = np.array([1.0, 2.0, 3.0])
    law = fit_exponential(x, 2.0 * (1.5**x - 1) + 1.0)
    assert law.cov is None and law.dof == 0
    lo, hi = law.band(x)
    assert np.all(np.isnan(lo)) and np.all(np.isnan(hi))


def test_too_few_state_sizes_is_an_error():
    with pytest.raises(ValueError, match="distinct state sizes"):
        fit_linear([1.0, 1.0], [2.0, 3.0])
    with pytest.raises(ValueError, match="distinct state sizes"):
        fit_exponential([1.0, 2.0], [2.0, 3.0])


def test_paper_laws_predict_the_papers_370m_numbers():
    p = predicted_thresholds("370m")
    assert re(p["t_forget"], 62_000) < 0.01  # "about 62K" (section 5.2 law at N_S = 12.9M)
    assert re(p["t_recall"], 256_000) < 0.02  # "near-perfect retrieval on a 256K context" (section 5.3)
    # the laws themselves, in the paper's units
    assert re(PAPER_T_FORGET.predict(12.914688), 5.172 * 12.914688 - 4.469) < 1e-12
    assert re(PAPER_T_RECALL.predict(1.0), 4.756 * 0.365 - 0.742) < 1e-12


def test_forget_threshold_warning():
    msg = forget_threshold_warning("370m", 8192)
    assert msg is not None and "62.3K" in msg and "8192" in msg
    assert forget_threshold_warning("370m", 65536) is None
    # the gradient horizon counts: S x T under full BPTT, T under truncated
    assert forget_threshold_warning("370m", 8192, segments=12, bptt="full") is None
    msg = forget_threshold_warning("370m", 4096, segments=12, bptt="full")
    assert "gradient horizon 49152 (full BPTT: 12 segments x train_length 4096)" in msg
    assert "optim.bptt=full" in forget_threshold_warning("370m", 8192, segments=12)
    # a model config mapping (a recipe's model section) works; tiny states predict no threshold
    assert forget_threshold_warning({"d_model": 64, "n_layer": 2, "d_state": 16, "headdim": 16}, 64) is None
    from stuffed_mamba.model import Mamba2Config

    assert forget_threshold_warning(Mamba2Config(d_model=768, n_layer=24, vocab_size=50277), 8192) is not None
