import math

import pytest

from stuffed_mamba.training.schedule import wsd_lambda


def lam(step, **kw):
    args = dict(warmup_steps=10, total_steps=100, decay_fraction=0.1)
    args.update(kw)
    return wsd_lambda(step, **args)


def test_warmup_is_linear_then_stable():
    assert [lam(s) for s in range(10)] == pytest.approx([(s + 1) / 10 for s in range(10)])
    assert all(lam(s) == 1.0 for s in range(10, 90))


@pytest.mark.parametrize("decay", ["linear", "1-sqrt", "exponential"])
def test_decay_covers_the_last_fraction_and_ends_at_min(decay):
    values = [lam(s, decay=decay, min_lr_ratio=0.1) for s in range(100)]
    assert values[89] == 1.0
    decaying = values[90:]
    assert all(a > b for a, b in zip(decaying[:-1], decaying[1:], strict=True)), "strictly decreasing over the decay"
    assert values[99] == pytest.approx(0.1)
    assert lam(100, decay=decay, min_lr_ratio=0.1) == pytest.approx(0.1)
    assert lam(10_000, decay=decay, min_lr_ratio=0.1) == pytest.approx(0.1)


def test_decay_shapes_match_their_formulas():
    p = (95 - 90 + 1) / 10
    assert lam(95, decay="linear") == pytest.approx(1 - p)
    assert lam(95, decay="1-sqrt") == pytest.approx(1 - math.sqrt(p))
    assert lam(95, decay="exponential", min_lr_ratio=0.01) == pytest.approx(0.01**p)


def test_paper_schedule_1000_warmup_50k_steps():
    kw = dict(warmup_steps=1000, total_steps=50_000, decay_fraction=0.1)
    assert wsd_lambda(0, **kw) == pytest.approx(1e-3)
    assert wsd_lambda(999, **kw) == 1.0
    assert wsd_lambda(44_999, **kw) == 1.0  # decay starts at 45 000 = the last 10%
    assert wsd_lambda(47_499, **kw) == pytest.approx(0.5)
    assert wsd_lambda(49_999, **kw) == 0.0


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="decay"):
        lam(0, decay="cosine")
    with pytest.raises(ValueError):
        lam(0, total_steps=0)
