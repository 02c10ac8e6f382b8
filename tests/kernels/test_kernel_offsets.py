"""Kernel calls that never overflow (issue 21 section 1, state-spaces/mamba #1015).

Default suite: the planner as a pure function, the layouts the mixer really passes, the chaining
through the torch backend's ops. Under Triton's interpreter (`mamba_kernels`): split calls equal
unsplit ones (outputs, final states, every gradient), and, on meta tensors (no memory, no compute),
the tensors mamba_ssm's own host code hands its kernels at the recipes' and the official models' full
sizes: the offset inventory of `ops.kernel_offsets` equals the largest recorded offset, and the
backend splits exactly the calls that would reach 2^31 - 1.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from pathlib import Path

import pytest
import torch

from stuffed_mamba.model import Mamba2Config
from stuffed_mamba.ops import kernel_split, torch_backend
from stuffed_mamba.ops.kernel_offsets import INT32_MAX, NormCall, SSDCall, largest_offset, mixer_calls
from tests.helpers import rel_err

RECIPES = sorted((Path(__file__).resolve().parents[2] / "recipes").glob("*.yaml"))
# state-spaces/mamba2-*: d_state 128, headdim 64, expand 2, ngroups 1, d_conv 4, chunk 256 (the defaults)
OFFICIAL = {"130m": (768, 24), "370m": (1024, 48), "780m": (1536, 48), "1.3b": (2048, 48), "2.7b": (2560, 64)}
LONG = (131072, 262144, 524288)


# ------------------------------------------------------------------------------- the planner


def _affine(stride_row, stride_tok, width):
    """largest(r, L) of one view: (r - 1) * stride_row + (L - 1) * stride_tok + width - 1."""
    return lambda r, L: (r - 1) * stride_row + (L - 1) * stride_tok + width - 1


def _check_cover(pieces, rows, length):
    cells = sorted((r, t) for p in pieces for r in range(*p.rows) for t in range(*p.tokens))
    assert cells == [(r, t) for r in range(rows) for t in range(length)]


def test_plan_splits_by_rows_first_then_along_the_sequence_at_chunk_multiples():
    rows, T = 5, 1000
    largest = _affine(T * 30, 30, 20)  # a view: row stride T * 30, token stride 30
    assert kernel_split.plan(largest, rows, T, bound=largest(rows, T) + 1) == [kernel_split.Piece((0, 5), (0, T))]

    bound = largest(2, T) + 1  # two rows fit, three do not
    pieces = kernel_split.plan(largest, rows, T, bound=bound)
    assert [p.rows for p in pieces] == [(0, 2), (2, 4), (4, 5)] and all(p.tokens == (0, T) for p in pieces)

    bound = largest(1, 300) + 1  # one row of 300 tokens fits, 301 do not
    pieces = kernel_split.plan(largest, rows, T, bound=bound, align=64)
    _check_cover(pieces, rows, T)
    assert all(largest(p.rows[1] - p.rows[0], p.tokens[1] - p.tokens[0]) < bound for p in pieces)
    starts = [p.tokens[0] for p in pieces if p.rows == (0, 1)]
    assert starts == [0, 256, 512, 768] and all(t % 64 == 0 for t in starts)  # 256 = the largest multiple of 64
    assert pieces[3].tokens == (768, 1000)  # the last piece takes the rest: T is not a multiple of 256


def test_plan_refuses_a_call_no_split_can_fix():
    with pytest.raises(kernel_split.OffsetError, match="one row of 64 tokens"):
        kernel_split.plan(_affine(10**9, 10**8, 1), 2, 1000, bound=INT32_MAX, align=64)


def test_inventory_grows_with_rows_and_tokens():
    """The planner's bisection needs largest(r, L) monotone in r and L (chunk padding included)."""
    call = mixer_calls(Mamba2Config(d_model=64, d_state=16, headdim=16, chunk_size=16), 3, 100)["ssd"]
    values = [[call.largest(r, L) for L in range(1, 101)] for r in range(1, 4)]
    for row in values:
        assert all(a <= b for a, b in zip(row, row[1:], strict=False))
    assert all(a < b for a, b in zip(values, values[1:], strict=False))


# ------------------------------------------------------------ the layouts the mixer passes


def test_mixer_calls_are_the_layouts_the_mixer_passes(monkeypatch):
    """`mixer_calls` (what describe/doctor and the recipe test plan with) has the strides that
    a real mixer hands the backend: z and the conv input are views of in_proj's output."""
    from stuffed_mamba.model.mixer import Mamba2Mixer

    config = Mamba2Config(d_model=32, d_state=8, headdim=8, chunk_size=16, ngroups=2)
    mixer = Mamba2Mixer(config, backend="torch")
    seen = {}

    def spy(name, fn):
        def wrapped(*args, **kwargs):
            seen[name] = [tuple(a.stride()) for a in args if isinstance(a, torch.Tensor)]
            return fn(*args, **kwargs)

        return wrapped

    for name in ("ssd", "gated_rmsnorm", "causal_conv1d"):
        monkeypatch.setattr(mixer.ops, name, spy(name, getattr(torch_backend, name)))
    b, T = 3, 37
    mixer(torch.randn(b, T, 32))
    calls = mixer_calls(config, b, T)
    ssd, norm, conv = calls["ssd"], calls["gated_rmsnorm"], calls["causal_conv1d"]
    x, dt, _A, B, C = seen["ssd"]
    assert (x, dt, B, C) == (ssd.x_strides, ssd.dt_strides, ssd.B_strides, ssd.C_strides)
    assert seen["causal_conv1d"][0] == conv.x_strides
    y, z = seen["gated_rmsnorm"][:2]
    assert (y[-2:], z[-2:]) == (norm.y_strides, norm.z_strides)  # the rows' stride once flattened
    assert z[-2] == config.d_in_proj


# --------------------------------------------------- chaining, through the torch backend's ops


def _ssd_inputs(b=3, T=50, h=4, p=8, g=2, n=8, requires_grad=True):
    """x, B, C as views of one [b, T, conv_dim] tensor, as the mixer passes them."""
    xBC = torch.randn(b, T, h * p + 2 * g * n)
    leaves = dict(
        xBC=xBC,
        dt=torch.rand(b, T, h) * 0.49 + 0.01,
        A=-(torch.rand(h) * 1.8 + 0.2),
        D=torch.randn(h),
        h0=torch.randn(b, h, p, n),
    )
    leaves = {k: v.clone().requires_grad_(requires_grad) for k, v in leaves.items()}
    xBC = leaves["xBC"]
    views = dict(
        x=xBC[..., : h * p].unflatten(-1, (h, p)),
        B=xBC[..., h * p : h * p + g * n].unflatten(-1, (g, n)),
        C=xBC[..., h * p + g * n :].unflatten(-1, (g, n)),
    )
    return leaves, views


def _ssd_call(leaves, views, chunk_size):
    x, B, C = views["x"], views["B"], views["C"]
    return SSDCall(
        *(x.shape[0], x.shape[1], x.shape[2], x.shape[3], B.shape[2], B.shape[3], chunk_size),
        x_strides=x.stride(),
        dt_strides=leaves["dt"].stride(),
        B_strides=B.stride(),
        C_strides=C.stride(),
        has_D=True,
        sm_count=2,
    )


def _grads_of(run, leaves, seed=0):
    """Outputs of run() and d/d(leaves) of <outputs, fixed random weights>."""
    outs = run()
    g = torch.Generator().manual_seed(seed)
    loss = sum((o * torch.randn(o.shape, generator=g)).sum() for o in outs)
    grads = torch.autograd.grad(loss, list(leaves.values()))
    return [o.detach() for o in outs], dict(zip(leaves, grads, strict=True))


def _assert_same(a, b, tol):
    (outs_a, grads_a), (outs_b, grads_b) = a, b
    for i, (u, v) in enumerate(zip(outs_a, outs_b, strict=True)):
        assert rel_err(u, v) < tol, f"output {i}: {rel_err(u, v):.1e}"
    for k in grads_a:
        assert rel_err(grads_a[k], grads_b[k]) < tol, f"d{k}: {rel_err(grads_a[k], grads_b[k]):.1e}"


@pytest.mark.parametrize("cut", ["rows", "sequence"])
def test_chained_torch_ssd_equals_one_call(cut):
    leaves, views = _ssd_inputs()
    cs = 16
    call = _ssd_call(leaves, views, cs)
    bound = call.largest(2, 50) + 1 if cut == "rows" else call.largest(1, 20) + 1
    pieces = kernel_split.plan(call.largest, 3, 50, bound=bound, align=cs)
    assert len(pieces) == (2 if cut == "rows" else 3 * 4)  # rows {0,1},{2}; or 16+16+16+2 tokens per row

    def one(x, dt, B, C, *, initial_state):
        return torch_backend.ssd(x, dt, leaves["A"], B, C, chunk_size=cs, D=leaves["D"], initial_state=initial_state)

    seq = dict(x=views["x"], dt=leaves["dt"], B=views["B"], C=views["C"])
    whole = _grads_of(lambda: one(**seq, initial_state=leaves["h0"]), leaves)
    split = _grads_of(lambda: kernel_split.run_chained(pieces, one, seq, leaves["h0"]), leaves)
    _assert_same(split, whole, 1e-5)


def test_chained_torch_conv_and_rows_of_the_norm_equal_one_call():
    b, T, c, k = 2, 23, 6, 4
    tensors = dict(x=torch.randn(b, T, c), w=torch.randn(c, k), bias=torch.randn(c), h0=torch.randn(b, c, k - 1))
    leaves = {n: t.requires_grad_() for n, t in tensors.items()}
    pieces = [kernel_split.Piece((i, i + 1), (t0, min(t0 + 5, T))) for i in range(b) for t0 in range(0, T, 5)]

    def conv(x, *, initial_state):
        return torch_backend.causal_conv1d(x, leaves["w"], leaves["bias"], initial_state=initial_state)

    whole = _grads_of(lambda: conv(leaves["x"], initial_state=leaves["h0"]), leaves)
    split = _grads_of(lambda: kernel_split.run_chained(pieces, conv, dict(x=leaves["x"]), leaves["h0"]), leaves)
    _assert_same(split, whole, 1e-6)

    y, wide = torch.randn(40, 12, requires_grad=True), torch.randn(40, 30, requires_grad=True)
    weight = torch.randn(12, requires_grad=True)
    norm_leaves = dict(y=y, wide=wide, weight=weight)
    z = wide[:, 5:17]  # a view, row stride 30

    def norm(y, z):
        return torch_backend.gated_rmsnorm(y, z, weight, eps=1e-5, group_size=6)

    call = NormCall(40, 12, 6, y.stride(), z.stride(), sm_count=1)
    pieces = kernel_split.plan(call.largest, 40, 1, bound=call.largest(7, 1) + 1)
    assert [p.rows for p in pieces][:2] == [(0, 7), (7, 14)] and len(pieces) == 6
    whole = _grads_of(lambda: [norm(y, z)], norm_leaves)
    split = _grads_of(lambda: [kernel_split.run_rows(pieces, norm, dict(y=y, z=z))], norm_leaves)
    _assert_same(split, whole, 1e-6)


# ------------------------------------------------------ under the interpreter: split = unsplit


def _counted(monkeypatch, module, name) -> list:
    """Calls of module.name (the backend's one-kernel-call functions) from now on."""
    calls, fn = [], getattr(module, name)

    def counted(*args, **kwargs):
        calls.append(1)
        return fn(*args, **kwargs)

    monkeypatch.setattr(module, name, counted)
    return calls


@pytest.mark.slow  # 2-3 min each under the interpreter on a shared 2-core machine
@pytest.mark.parametrize("cut", ["rows", "sequence"])
@pytest.mark.extended("minutes of interpreted SSD per cut (passed here: 189 s and 165 s at load ~18)")
def test_split_kernel_ssd_equals_one_call(mamba_kernels, monkeypatch, cut):
    """y, h_T and d/d(x, Delta, A, B, C, D, h_0) of the kernels split by rows, or along a
    sequence of 40 tokens (chunks of 16: pieces of 16, 16, 8), equal one kernel call."""
    cs, b = 16, (3 if cut == "rows" else 2)
    leaves, views = _ssd_inputs(b=b, T=40)
    call = _ssd_call(leaves, views, cs)

    def run():
        x, B, C = views["x"], views["B"], views["C"]
        return mamba_kernels.ssd(
            x, leaves["dt"], leaves["A"], B, C, chunk_size=cs, D=leaves["D"], initial_state=leaves["h0"]
        )

    whole = _grads_of(run, leaves)
    bound = call.largest(2, 40) + 1 if cut == "rows" else call.largest(1, 16) + 1
    monkeypatch.setattr(mamba_kernels, "MAX_KERNEL_OFFSET", bound)
    calls = _counted(monkeypatch, mamba_kernels, "_ssd")
    split = _grads_of(run, leaves)
    assert len(calls) == (2 if cut == "rows" else 2 * 3)
    _assert_same(split, whole, 1e-5)


def test_split_kernel_norm_and_conv_equal_one_call(mamba_kernels, monkeypatch):
    """The gated norm by rows (z a view with row stride 60, as in_proj's output), and the conv
    wrapper's causal-conv1d path (the channel-last stand-in) along the sequence: outputs, final
    conv state and every gradient equal one call."""
    from tests.kernels.test_norm_conv_kernels import _channel_last_causal_conv1d_fn

    y, wide, w = torch.randn(2, 9, 24), torch.randn(2, 9, 60), 1 + 0.5 * torch.randn(24)
    leaves = {k: v.requires_grad_() for k, v in dict(y=y, wide=wide, w=w).items()}

    def norm():
        z = leaves["wide"][..., 20:44]
        return [mamba_kernels.gated_rmsnorm(leaves["y"], z, leaves["w"], eps=1e-5, group_size=12)]

    whole = _grads_of(norm, leaves)
    monkeypatch.setattr(mamba_kernels, "MAX_KERNEL_OFFSET", 4 * 60)  # rows of 4: 3 * 60 + 20 + 23 < 240
    calls = _counted(monkeypatch, mamba_kernels, "_norm")
    split = _grads_of(norm, leaves)
    assert len(calls) == math.ceil(18 / 4)
    _assert_same(split, whole, 1e-5)

    monkeypatch.setattr(mamba_kernels, "causal_conv1d_fn", _channel_last_causal_conv1d_fn)
    b, T, c, k = 2, 23, 6, 4
    tensors = dict(
        wide=torch.randn(b, T, 20), w=torch.randn(c, k) * 0.5, bias=torch.randn(c), h0=torch.randn(b, c, k - 1)
    )
    leaves = {n: t.requires_grad_() for n, t in tensors.items()}

    def conv():
        x = leaves["wide"][..., 3:9]  # a view of in_proj's output
        return mamba_kernels.causal_conv1d(x, leaves["w"], leaves["bias"], initial_state=leaves["h0"])

    monkeypatch.setattr(mamba_kernels, "MAX_KERNEL_OFFSET", INT32_MAX)
    whole = _grads_of(conv, leaves)
    monkeypatch.setattr(mamba_kernels, "MAX_KERNEL_OFFSET", 8 * 20)  # one row of 8 tokens: 7 * 20 + 5 < 160
    calls = _counted(monkeypatch, mamba_kernels, "_conv")
    split = _grads_of(conv, leaves)
    assert len(calls) == 2 * math.ceil(23 / 8)
    _assert_same(split, whole, 1e-6)


# --------------------------------- on meta tensors: what mamba_ssm really hands its kernels


def _record_launches(monkeypatch) -> list[tuple[str, int]]:
    """From now on the interpreted kernels do not run: each launch records (its module, the
    largest element offset over the tensors it is handed)."""
    from triton.runtime.interpreter import InterpretedFunction

    launches = []

    def record(self, *args, grid, warmup, **kwargs):
        tensors = [a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)]
        module = self.fn.__module__.rsplit(".", 1)[-1]
        launches.append((module, max(largest_offset(t.shape, t.stride()) for t in tensors)))

    monkeypatch.setattr(InterpretedFunction, "run", record)
    return launches


def _sms(monkeypatch, n: int) -> None:
    from types import SimpleNamespace

    props = SimpleNamespace(multi_processor_count=n, name=f"{n} SMs (test)")
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda *a, **k: props)


@pytest.mark.parametrize(
    "b, T, h, p, g, n, cs, sms, x_view",
    [
        (2, 1000, 8, 16, 2, 32, 64, 2, True),
        (3, 777, 4, 64, 1, 128, 256, 132, True),
        (1, 5000, 80, 64, 1, 128, 256, 132, True),  # 2.7B's heads
        (4, 300, 16, 8, 4, 16, 32, 1, False),  # dense x; one SM: heads split in 4 programs
        (2, 64, 8, 4, 1, 64, 16, 1000, True),  # more SMs than programs: the largest dB/dcb buffers
    ],
)
def test_ssd_inventory_is_what_mamba_ssm_hands_its_kernels(
    mamba_kernels, monkeypatch, b, T, h, p, g, n, cs, sms, x_view
):
    """The largest offset over every tensor of every kernel launch of mamba_chunk_scan_combined's
    forward and backward (mamba_ssm's own host code, on meta tensors) equals SSDCall.largest."""
    _sms(monkeypatch, sms)
    monkeypatch.setattr(mamba_kernels, "MAX_KERNEL_OFFSET", 2**62)
    launches = _record_launches(monkeypatch)
    width = h * p + 2 * g * n + (7 if x_view else 0)
    xBC = torch.empty(b, T, width, device="meta", requires_grad=True)
    x = xBC[..., : h * p].unflatten(-1, (h, p)) if x_view else torch.empty(b, T, h, p, device="meta")
    B = xBC[..., h * p : h * p + g * n].unflatten(-1, (g, n))
    C = xBC[..., h * p + g * n : h * p + 2 * g * n].unflatten(-1, (g, n))
    dt = torch.empty(b, T, h, device="meta", requires_grad=True)
    A, D, h0 = (torch.empty(s, device="meta", requires_grad=True) for s in ((h,), (h,), (b, h, p, n)))
    y, hT = mamba_kernels.ssd(x, dt, A, B, C, chunk_size=cs, D=D, initial_state=h0)
    (y.sum() + hT.sum()).backward()
    assert len(launches) >= 18 and all(m.startswith("ssd_") for m, _ in launches)
    call = SSDCall(b, T, h, p, g, n, cs, x.stride(), dt.stride(), B.stride(), C.stride(), has_D=True, sm_count=sms)
    assert call.largest(b, T) == max(o for _, o in launches)


def test_norm_inventory_is_what_mamba_ssm_hands_its_kernels(mamba_kernels, monkeypatch):
    _sms(monkeypatch, 132)
    monkeypatch.setattr(mamba_kernels, "MAX_KERNEL_OFFSET", 2**62)
    launches = _record_launches(monkeypatch)
    for M, N, group, dip in [(1000, 512, 256, 1100), (77, 96, 96, 96), (5, 3072, 3072, 6448), (9, 24, 12, 60)]:
        launches.clear()
        y = torch.empty(M, N, device="meta", requires_grad=True)
        wide = torch.empty(M, dip, device="meta", requires_grad=True)
        w = torch.empty(N, device="meta", requires_grad=True)
        z = wide[:, dip - N :]
        mamba_kernels.gated_rmsnorm(y, z, w, eps=1e-5, group_size=group).sum().backward()
        assert len(launches) == 2 and all(m == "layernorm_gated" for m, _ in launches)
        assert NormCall(M, N, group, y.stride(), z.stride(), 132).largest(M) == max(o for _, o in launches)


def _shapes() -> list[tuple[str, Mamba2Config, int, int]]:
    """(name, architecture, rows, tokens per row): every shipped recipe at its own length and at
    128K, 256K and 512K with its batch rows; the official sizes at those lengths with 1 and 4 rows."""
    from stuffed_mamba.training.config import load_recipe, resolved

    shapes = []
    for path in RECIPES:
        cfg = resolved(load_recipe(path))
        fields = {
            f.name: getattr(cfg.model, f.name)
            for f in dataclasses.fields(Mamba2Config)
            if f.init and getattr(cfg.model, f.name, None) is not None
        }
        fields["A_init_range"] = tuple(fields.get("A_init_range", Mamba2Config.A_init_range))
        config = Mamba2Config(**fields)
        for T in (cfg.data.train_length, *LONG):
            shapes.append((path.stem, config, cfg.data.batch_size, T))
    for name, (d_model, n_layer) in OFFICIAL.items():
        config = Mamba2Config(d_model=d_model, n_layer=n_layer)
        shapes += [(f"mamba2-{name}", config, rows, T) for T in LONG for rows in (1, 4)]
    return shapes


@pytest.mark.slow  # 40-70 s on the shared machine: 9 recipes loaded, 57 shapes x 2 meta forward + backward
def test_backend_splits_exactly_the_calls_that_would_reach_2_31(mamba_kernels, monkeypatch):
    """For every recipe and official shape: one mixer (its real layouts), forward and backward, on
    meta tensors through the mamba_ssm backend, with H100's 132 SMs. Unsplit (bound lifted), the
    largest offset any kernel is handed equals the inventory's; with the default bound, a call is
    split exactly when its unsplit offset would reach 2^31 - 1, into the planned pieces, and no
    launch is handed an offset that reaches it."""
    from stuffed_mamba.model.mixer import Mamba2Mixer

    _sms(monkeypatch, 132)
    launches = _record_launches(monkeypatch)
    conv_offsets = []

    def conv_fn(x, weight, bias=None, initial_states=None, activation=None):  # causal-conv1d's contract
        conv_offsets.append(max(largest_offset(t.shape, t.stride()) for t in (x, initial_states)))
        return torch.nn.functional.silu(x)  # dense, in x's channel-last order (as its empty_like)

    monkeypatch.setattr(mamba_kernels, "causal_conv1d_fn", conv_fn)
    counts = {op: _counted(monkeypatch, mamba_kernels, fn) for op, fn in [("ssd", "_ssd"), ("gated_rmsnorm", "_norm")]}
    counts["causal_conv1d"] = conv_offsets

    def run(mixer, rows, T, bound) -> dict[str, tuple[int, int]]:
        """{op: (largest offset handed to its kernels, number of calls)} of one forward + backward."""
        monkeypatch.setattr(mamba_kernels, "MAX_KERNEL_OFFSET", bound)
        launches.clear()
        for c in counts.values():
            c.clear()
        u = torch.empty(rows, T, mixer.config.d_model, device="meta", requires_grad=True)
        out, state = mixer(u)
        (out.sum() + state.ssm.sum() + state.conv.sum()).backward()
        ssd = [o for m, o in launches if m.startswith("ssd_")]
        norm = [o for m, o in launches if m == "layernorm_gated"]
        return {
            "ssd": (max(ssd), len(counts["ssd"])),
            "gated_rmsnorm": (max(norm), len(counts["gated_rmsnorm"])),
            "causal_conv1d": (max(conv_offsets), len(conv_offsets)),
        }

    table, split_any, whole_any, seen, mixers = [], set(), set(), set(), {}
    for name, config, rows, T in _shapes():
        if (repr(config), rows, T) in seen:  # e.g. the PG19 recipe: the 370M one's shapes
            continue
        seen.add((repr(config), rows, T))
        if repr(config) not in mixers:
            with torch.device("meta"):
                mixers[repr(config)] = Mamba2Mixer(config, backend="mamba_ssm")
        mixer = mixers[repr(config)]
        whole = run(mixer, rows, T, 2**62)
        split = run(mixer, rows, T, INT32_MAX)
        calls = mixer_calls(config, rows, T, sm_count=132)
        for op, call in calls.items():
            largest, n_whole = whole[op]
            assert n_whole == 1 and call.largest(call.rows, call.length) == largest, (name, rows, T, op)
            pieces = kernel_split.plan(call.largest, call.rows, call.length, bound=INT32_MAX, align=call.align)
            overflows = largest >= INT32_MAX
            assert (len(pieces) > 1) == overflows and split[op][1] == len(pieces), (name, rows, T, op)
            assert split[op][0] < INT32_MAX, (name, rows, T, op)
            (split_any if overflows else whole_any).add((config.d_model, op))
            table.append(f"{name:24} {rows} x {T:>7}  {op:14} {largest:>14,}  {len(pieces)} call(s)")
    print("\n" + "\n".join(table))
    # the examples: 2.7B's z view at one row of 256K; 780M's SSD stays whole at one row of 128K
    assert (2560, "gated_rmsnorm") in split_any and (1536, "ssd") in whole_any


# ------------------------------------------------------------------------------------ doctor


def _memory_line(recipe: str, overrides: list[str]) -> str:
    """The doctor's memory line for a recipe without init_from (its passed/skipped/failed detail)."""
    from types import SimpleNamespace

    from stuffed_mamba.training import doctor

    ctx = doctor.Context(recipe, overrides)
    with contextlib.suppress(doctor.Warn):  # valid, but asks for GPUs this machine does not have
        doctor.check_recipe(ctx)
    ctx.passed |= {"recipe", "tokenizer"}
    ctx.tokenizer = SimpleNamespace(vocab_size=50277)
    try:
        return doctor.check_memory(ctx)
    except (doctor.Skip, doctor.Fail) as e:  # no GPU here to compare the memory with
        return str(e)


def test_doctor_prints_the_largest_offset_and_the_calls_per_op():
    """`stuffed-mamba doctor RECIPE` on a mamba_ssm recipe: the largest offset of its shapes and
    how many calls each op will use, as the planner decides (36M scratch, 8 rows of 256K tokens:
    its gated norm and conv are split in two)."""
    from stuffed_mamba.ops.kernel_split import describe
    from stuffed_mamba.training.config import load_recipe, mamba2_overrides

    line = _memory_line("recipes/mamba2_36m_scratch.yaml", ["data.train_length=262144"])
    config = Mamba2Config(**mamba2_overrides(load_recipe("recipes/mamba2_36m_scratch.yaml").model))
    expected = describe(config, 8, 262144)
    assert expected in line, line
    calls = mixer_calls(config, 8, 262144)
    worst = max(c.largest(c.rows, c.length) for c in calls.values())
    assert f"largest kernel offset {worst:,} " in expected and worst >= INT32_MAX
    assert "ssd 1 call, gated_rmsnorm 2 calls, causal_conv1d 2 calls" in expected
    assert "kernel offset" not in _memory_line("recipes/tiny_cpu.yaml", [])  # the torch backend: no kernels
