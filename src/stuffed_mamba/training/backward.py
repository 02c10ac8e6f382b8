"""Several backward passes, one optimiser step: the gradient is summed locally and communicated once.

In episode mode (`optim.optimizer_step: episode`) the S segments of an episode each run a
backward pass and one optimiser step follows. Every strategy must then apply the sum of the S
gradients, averaged over ranks, exactly as one backward of the summed loss would:

- DDP all-reduces inside every backward unless told otherwise: the first S-1 run under
  `no_sync` (local `.grad` accumulates), the last one all-reduces the sum.
- DeepSpeed, with `gradient_accumulation_steps=1` (Lightning owns that number and sets it to
  `accumulate_grad_batches`), treats every backward as an accumulation boundary; ZeRO-2 would
  then keep only the last segment's gradient. `engine.set_gradient_accumulation_boundary(False)`
  before the first S-1 makes ZeRO accumulate them (stage 1: in `.grad`; stage 2: reduced into
  its partition buffers; stage 3: its partitioned gradients) and `True` before the last makes
  that backward the boundary at which the next `engine.step()` applies the sum. DeepSpeed also
  expects one `engine.forward` per backward (it advances ZeRO-3's micro-step there), while
  Lightning runs the whole `training_step` in one: each backward first does what that forward
  would (`optimizer.clear_backward_seen_flag()`). Without it ZeRO-3 kept only the last segment.

`make_backward(module)` returns that logic as one callable, `backward(tensors, grad_tensors=None,
*, last)`, with the signature of `torch.autograd.backward` plus `last` (is this the last backward
before the optimiser step?), so the episode loops (truncated here, full BPTT in
`training/bptt.py`) stay free of strategy code.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext
from typing import Protocol

import torch

from stuffed_mamba.training.strategy import deepspeed_engine


class Backward(Protocol):
    def __call__(
        self,
        tensors: torch.Tensor | Sequence[torch.Tensor],
        grad_tensors: torch.Tensor | Sequence[torch.Tensor] | None = None,
        *,
        last: bool,
    ) -> None: ...


def make_backward(module) -> Backward:
    """The backward of a LightningModule under manual optimisation, for its current strategy."""
    strategy = module.trainer.strategy

    def backward(tensors, grad_tensors=None, *, last: bool) -> None:
        loss = _scalar(tensors, grad_tensors)
        engine = deepspeed_engine(strategy)
        if engine is not None:
            # engine.forward starts each micro-batch with this (ZeRO-3 then accumulates instead of
            # copying; ZeRO-1/2 drop their per-backward buffers), but Lightning runs the whole
            # training_step, all S segments, inside one engine forward.
            clear = getattr(engine.optimizer, "clear_backward_seen_flag", None)
            if clear is not None:
                clear()
            # Set before every backward: the flag stays until changed, and step() reads it too.
            engine.set_gradient_accumulation_boundary(last)
            module.manual_backward(loss)
            return
        # DDP: no all-reduce before the last backward (`no_sync`). One device: nothing to skip.
        no_sync = getattr(strategy, "block_backward_sync", None)
        with nullcontext() if last or no_sync is None else no_sync():
            module.manual_backward(loss)

    return backward


def _scalar(tensors, grad_tensors) -> torch.Tensor:
    """One scalar whose gradient is that of `torch.autograd.backward(tensors, grad_tensors)`:
    sum_i <t_i, g_i> (DeepSpeed's `engine.backward` takes a scalar loss only)."""
    if isinstance(tensors, torch.Tensor):
        tensors = [tensors]
    if grad_tensors is None:
        grad_tensors = [None] * len(tensors)
    elif isinstance(grad_tensors, torch.Tensor):
        grad_tensors = [grad_tensors]
    if len(tensors) != len(grad_tensors):
        raise ValueError(f"{len(tensors)} tensors but {len(grad_tensors)} grad_tensors")
    terms = []
    for t, g in zip(tensors, grad_tensors, strict=True):
        if g is None:
            if t.numel() != 1:
                raise ValueError(f"grad_tensors needed for a tensor of shape {tuple(t.shape)}")
            terms.append(t.reshape(()))
        else:
            terms.append((t * g.detach().to(t.dtype)).sum())
    return sum(terms[1:], terms[0])
