import math

import pytest
import torch
import torch.nn.functional as F

from stuffed_mamba.probes.buckets import log_buckets
from stuffed_mamba.probes.position_loss import learned_to_forget, loss_per_position, loss_summary
from tests.helpers import rel_err


def _curve(T=4000, T_train=1000, beyond=None):
    """A typical LM-loss curve: high at t=1, falling; optional shape past T_train."""
    t = torch.arange(1, T + 1, dtype=torch.float64)
    loss = 2.0 + 6.0 / t.sqrt()  # max within T_train: 8.0 at t = 1
    if beyond is not None:
        loss[T_train:] = beyond(t[T_train:])
    return loss


def test_learned_to_forget_flat_beyond_is_true():
    assert learned_to_forget(_curve(), 1000)
    # rising but staying under 2x the max within (8.0) everywhere
    assert learned_to_forget(_curve(beyond=lambda t: 2 + 13.9 * (t - 1000) / 3000), 1000)


def test_learned_to_forget_crossing_anywhere_is_false():
    assert not learned_to_forget(_curve(beyond=lambda t: 2 + 14.2 * (t - 1000) / 3000), 1000)  # 16.2 > 16 at the end
    spike = _curve()
    spike[2500] = 16.01  # one position over 2 x 8.0
    assert not learned_to_forget(spike, 1000)
    assert not learned_to_forget(spike.tolist(), 1000)  # lists work too
    diverged = _curve()
    diverged[3000] = float("nan")
    assert not learned_to_forget(diverged, 1000)


def test_learned_to_forget_edges():
    assert learned_to_forget(_curve(T=1000), 1000)  # nothing beyond: holds vacuously
    with pytest.raises(ValueError):
        learned_to_forget(_curve(), 0)
    bad = _curve()
    bad[10] = float("inf")
    with pytest.raises(ValueError, match="within"):
        learned_to_forget(bad, 1000)


@pytest.mark.parametrize("chunk", [13, 4096])
def test_loss_per_position_matches_full_forward(tiny_lm, chunk):
    ids = torch.randint(0, 256, (2, 120), generator=torch.Generator().manual_seed(0))
    got = loss_per_position(tiny_lm, ids, chunk_size=chunk)
    assert got.shape == (119,)
    with torch.no_grad():
        logits = tiny_lm(ids).logits
        ref = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1), reduction="none")
        ref = ref.view(2, 119).mean(0)
        # and its mean is the model's own (chunked) loss
        labels = ids[:, 1:]
        own = tiny_lm(ids[:, :-1], labels=labels).loss
    assert rel_err(got, ref) < 1e-5
    assert abs(got.mean().item() - own.item()) / own.item() < 1e-5


def test_log_buckets_cover_every_position_once():
    loss = torch.rand(1000, generator=torch.Generator().manual_seed(0))
    centres, means = log_buckets(loss, 12)
    assert centres == sorted(centres) and centres[0] == 1
    # weight each bucket's mean by its size: recovers the total
    edges = torch.logspace(0, math.log10(1001), 13, dtype=torch.float64).floor().long().tolist()
    sizes = [hi - lo for lo, hi in zip(edges[:-1], edges[1:], strict=True) if hi > lo]
    assert sum(sizes) == 1000
    assert abs(sum(m * s for m, s in zip(means, sizes, strict=True)) - loss.sum().item()) < 1e-3


def test_loss_summary():
    s = loss_summary(_curve(beyond=lambda t: 20 + 0 * t), 1000, buckets=8)
    assert s["learned_to_forget"] is False and s["max_within"] == pytest.approx(8.0)
    assert s["beyond_over_within"] == pytest.approx(20 / 8)
