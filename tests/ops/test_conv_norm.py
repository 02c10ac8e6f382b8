import torch

from stuffed_mamba.ops import causal_conv1d, causal_conv1d_step, gated_rmsnorm
from stuffed_mamba.ops.naive import conv_naive
from tests.helpers import rel_err


def test_conv_matches_conv1d_with_state_and_in_pieces():
    b, T, c, k = 2, 37, 12, 4
    x, w, bias, s0 = torch.randn(b, T, c), torch.randn(c, k), torch.randn(c), torch.randn(b, c, k - 1)
    y, sT = causal_conv1d(x, w, bias, initial_state=s0)
    y_ref, sT_ref = conv_naive(x, w, bias, initial_state=s0)
    assert rel_err(y, y_ref) < 1e-6 and torch.equal(sT, sT_ref)
    # pieces shorter than the kernel carry the older inputs along
    ys, s = [], s0
    for a, e in [(0, 2), (2, 3), (3, 20), (20, 37)]:
        yi, s = causal_conv1d(x[:, a:e], w, bias, initial_state=s)
        ys.append(yi)
    assert rel_err(torch.cat(ys, 1), y_ref) < 1e-6 and torch.equal(s, sT_ref)
    # and the decode step
    ys, s = [], s0
    for t in range(T):
        yi, s = causal_conv1d_step(x[:, t], w, bias, s)
        ys.append(yi)
    assert rel_err(torch.stack(ys, 1), y_ref) < 1e-6 and torch.equal(s, sT_ref)


def test_gated_rmsnorm_matches_transformers_per_group():
    from transformers.models.mamba2 import modeling_mamba2

    # transformers 5 renamed MambaRMSNormGated (the one in constraints.txt has the new name)
    norm = getattr(modeling_mamba2, "Mamba2RMSNormGated", None) or modeling_mamba2.MambaRMSNormGated
    d, groups = 32, 4
    ref = norm(d, group_size=d // groups, eps=1e-5)
    with torch.no_grad():
        ref.weight.normal_()
    y, z = torch.randn(2, 5, d), torch.randn(2, 5, d)
    out = gated_rmsnorm(y, z, ref.weight, eps=1e-5, group_size=d // groups)
    assert rel_err(out, ref(y, z)) < 1e-6
    # grouping matters: one group over all channels is a different function
    assert rel_err(gated_rmsnorm(y, z, ref.weight, eps=1e-5, group_size=d), out) > 1e-3


def test_conv_gradient_reaches_the_initial_state():
    """Full BPTT needs d/d(initial state), also through the final state when T < k-1."""
    b, c, k = 2, 12, 4
    w, bias = torch.randn(c, k), torch.randn(c)
    for T in (2, 37):
        x, s0 = torch.randn(b, T, c), torch.randn(b, c, k - 1)
        dy, ds = torch.randn(b, T, c), torch.randn(b, c, k - 1)
        grads = []
        for fn in (causal_conv1d, conv_naive):
            xs, ss = x.clone().requires_grad_(), s0.clone().requires_grad_()
            y, sT = fn(xs, w, bias, initial_state=ss)
            ((y * dy).sum() + (sT * ds).sum()).backward()
            grads.append((xs.grad, ss.grad))
        assert rel_err(grads[0][0], grads[1][0]) < 1e-6, T
        assert rel_err(grads[0][1], grads[1][1]) < 1e-6, T
        assert grads[0][1].abs().min() > 0, T  # every input kept in the state reaches an output
