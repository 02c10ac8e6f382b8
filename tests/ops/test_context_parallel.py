"""Context parallelism (ops/context_parallel.py) against one process: gloo, separate processes, fp32.

Each rank computes the unsplit reference itself (the wrapper is the plain backend outside `split_over`),
then its piece under `split_over(WORLD)`; logits, every layer's final state, every parameter gradient
and the initial state's gradient (summed over the ranks, as data parallelism's all-reduce does) must
match to a relative 1e-5. Lengths are not multiples of N x the block length (the torch backend's 64).
"""

from __future__ import annotations

import datetime
import json
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from stuffed_mamba.model import Mamba2Config
from tests.helpers import rel_err

TOL = 1e-5
# (tokens per rank, [(initial state, loss from `labels`, final state in the loss, activation checkpointing)]):
# 66 tokens per rank is one 64-token block and 2 more; 3 is d_conv - 1, the least a piece may hold.
# Without the final state in any rank's loss (truncated BPTT) rank 0's loss does not depend on the
# exchange: the case that deadlocks unless rank 0's graph still goes through the all-gathers.
CASES = [
    (66, [(False, False, True, False), (True, False, False, False), (True, True, True, True)]),
    (3, [(True, False, True, False)]),
]
# Under the Triton interpreter (slow): 40 tokens per rank, 2.5 of the kernels' 16-token chunks.
KERNEL_CASES = [(40, [(True, False, False, False), (True, True, True, True)])]
KERNEL_TOL = 1e-4  # a stated bound for fp32 kernels (not yet measured: the interpreted run did not finish here)
# A in [-0.5, -0.05] so that a piece's state is still felt many tokens into the next piece.
CONFIG = dict(
    d_model=32,
    n_layer=2,
    vocab_size=64,
    pad_vocab_size_multiple=1,
    d_state=8,
    headdim=8,
    ngroups=2,
    chunk_size=16,
    A_init_range=(0.05, 0.5),
)


def _case(model, ids, state, k, rank, *, labels, final_in_loss, checkpointing):
    """One forward + backward, unsplit (k=1) or as rank `rank` of k. Returns what is compared."""
    from stuffed_mamba.model import ModelState

    model.zero_grad(set_to_none=True)
    model.gradient_checkpointing = checkpointing
    model.train()
    h0 = None
    if state is not None:
        h0 = ModelState([layer.map(lambda t: t.clone().requires_grad_()) for layer in state.layers])
    T = ids.shape[1]
    sl = slice(rank * T // k, (rank + 1) * T // k)
    piece = ids[:, sl]
    if labels:
        out = model(piece, h0, labels=torch.roll(ids, -1, 1)[:, sl])
        loss = out.loss / k  # equal pieces: the mean over the ranks of their means is the global mean
    else:
        out = model(piece, h0)
        w = torch.linspace(-1, 1, out.logits.shape[-1])
        loss = (out.logits * w).sum() / ids.numel()
    if final_in_loss and rank == k - 1:  # only the last rank: rank 0's loss does not touch the exchange
        for i, layer in enumerate(out.state.layers):
            loss = loss + (i + 1) * (layer.ssm.sum() + 0.5 * layer.conv.sum())
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    if h0 is not None:
        for i, layer in enumerate(h0.layers):
            for name, t in (("conv", layer.conv), ("ssm", layer.ssm)):  # read on the group's rank 0 only
                grads[f"h0.{i}.{name}"] = torch.zeros_like(t) if t.grad is None else t.grad.clone()
    logits = None if labels else out.logits.detach()
    return logits, out.state.detach(), grads


def _worker(rank, k, init_file, out_dir, backend):
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=k, timeout=datetime.timedelta(seconds=600)
    )
    if backend == "mamba_ssm":
        from tests.kernels.conftest import interpreted_kernels

        with interpreted_kernels():
            _compare(rank, k, out_dir, backend, KERNEL_CASES)
    else:
        _compare(rank, k, out_dir, backend, CASES)
    dist.destroy_process_group()


def _compare(rank, k, out_dir, backend, all_cases):
    from stuffed_mamba.model import Mamba2LM, ModelState
    from stuffed_mamba.ops import context_parallel as cp

    cp.install()
    torch.manual_seed(0)
    config = Mamba2Config(**CONFIG)
    model = Mamba2LM(config, backend=backend)
    errs: dict[str, float] = {}
    off: dict[str, float] = {}  # a piece run alone from a zero state, against the reference
    gen = torch.Generator().manual_seed(1)
    for T, cases in all_cases:
        T = T * k
        ids = torch.randint(0, config.vocab_size, (2, T), generator=gen)
        state = ModelState.zeros(config, 2).map(lambda t: torch.randn(t.shape, generator=gen) * 0.5)
        for with_h0, labels, final_in_loss, ckpt in cases:
            h0 = state if with_h0 else None
            tag = f"T{T}/{'h0' if with_h0 else 'zero'}/{'labels' if labels else 'logits'}"
            tag += f"{'/final' if final_in_loss else ''}{'/ckpt' if ckpt else ''}"
            opts = dict(labels=labels, final_in_loss=final_in_loss, checkpointing=ckpt)
            ref_logits, ref_state, ref_grads = _case(model, ids, h0, 1, 0, **opts)
            with cp.split_over(dist.group.WORLD):
                logits, st, grads = _case(model, ids, h0, k, rank, **opts)
            for g in grads.values():
                dist.all_reduce(g)
            if logits is not None:
                errs[f"{tag}/logits"] = rel_err(logits, ref_logits[:, rank * T // k : (rank + 1) * T // k])
            for i, (a, b) in enumerate(zip(st.layers, ref_state.layers, strict=True)):
                errs[f"{tag}/state{i}.conv"] = rel_err(a.conv, b.conv)
                errs[f"{tag}/state{i}.ssm"] = rel_err(a.ssm, b.ssm)
            assert grads.keys() == ref_grads.keys(), (sorted(grads), sorted(ref_grads))
            errs[f"{tag}/grads"] = max(rel_err(grads[n], ref_grads[n]) for n in ref_grads)
        # the exchange matters: a piece run alone from a zero state is far off
        with torch.no_grad():
            alone = model(ids[:, rank * T // k : (rank + 1) * T // k]).logits
            full = model(ids).logits[:, rank * T // k : (rank + 1) * T // k]
        off[f"T{T}"] = rel_err(alone, full)
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump(dict(errs=errs, off=off), f)


def run_ranks(k: int, tmp_path, backend: str = "torch") -> tuple[dict[str, float], dict[str, float]]:
    """Relative errors of k ranks against one process, and of the pieces run alone (rank > 0: large)."""
    mp.spawn(_worker, args=(k, str(tmp_path / "init"), str(tmp_path), backend), nprocs=k)
    errs: dict[str, float] = {}
    off: dict[str, float] = {}
    for r in range(k):
        with open(tmp_path / f"rank{r}.json") as f:
            got = json.load(f)
        errs.update({f"rank{r}/{key}": v for key, v in got["errs"].items()})
        off.update({f"rank{r}/{key}": v for key, v in got["off"].items() if r > 0})
    return errs, off


# 4 processes on a 2-core machine: ~4 s of CPU each only to import torch, so 4 ranks are slow here
@pytest.mark.parametrize("k", [2, pytest.param(4, marks=pytest.mark.slow)])
def test_context_parallel_equals_one_process(k, tmp_path):
    errs, off = run_ranks(k, tmp_path)
    bad = {key: v for key, v in errs.items() if not v < TOL}
    assert not bad, bad
    assert len(errs) == k * 4 * (2 + 2 * CONFIG["n_layer"]) - k  # every case of every rank reported
    # the comparison can see the exchange: without it, the later pieces are far off
    assert len(off) == 2 * (k - 1) and min(off.values()) > 1e-2, off


@pytest.mark.slow
@pytest.mark.skipif(
    not os.environ.get("STUFFED_MAMBA_INTERPRETER_CP"),
    reason="2 ranks of Triton-interpreted kernels, forward and backward, outlast CI's budget (an 85-minute run "
    "under load did not finish); STUFFED_MAMBA_INTERPRETER_CP=1 runs it",
)
def test_context_parallel_mamba_ssm_kernels_equal_one_process(tmp_path):
    """The same with mamba_ssm's Triton kernels under the interpreter (2 ranks), against the same backend."""
    errs, off = run_ranks(2, tmp_path, backend="mamba_ssm")
    bad = {key: v for key, v in errs.items() if not v < KERNEL_TOL}
    assert not bad, bad
    assert len(errs) == 2 * 2 * (2 + 2 * CONFIG["n_layer"]) - 2
    assert len(off) == 1 and min(off.values()) > 1e-2, off


def test_pieces_are_equal_and_cover_the_sequence():
    from stuffed_mamba.ops.context_parallel import piece

    assert [piece(12, r, 4) for r in range(4)] == [slice(0, 3), slice(3, 6), slice(6, 9), slice(9, 12)]
    with pytest.raises(ValueError, match="divisible by 4, got 10"):
        piece(10, 0, 4)
