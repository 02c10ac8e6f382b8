"""Test-only: `stuffed-mamba fit` in 2-rank subprocesses with test hooks that must exist on every rank.

    python -m tests.scripts.hooked_fit [--deepspeed-cpu] [--count-allreduce] [--nan-calls A:B]
                                        [--inf-grad-calls A:B] RECIPE key=value ...

Lightning re-launches `python -m tests.scripts.hooked_fit <same arguments>` for the other ranks,
so every rank gets the same hooks. Results a test reads go to `run.dir/hooks/`:
- `--deepspeed-cpu`: the real DeepSpeed engine on the CPU (tests/deepspeed_cpu.py).
- `--count-allreduce`: DDP gradient all-reduces (comm-hook calls) per episode, one line per
  episode in `hooks/allreduce_rank{R}.txt` (the tiny test model fits one DDP bucket).
- `--nan-calls A:B`: the loss of forward calls A..B-1 (0-based, counted over the run) is NaN.
- `--inf-grad-calls A:B`: the loss of those calls stays finite but its backward makes the
  gradient of `lm_head.weight` inf (a non-finite gradient with a finite loss).
- `--save-weights-before K`: rank 0 saves `lm_head.weight` as it is before forward call K to
  `hooks/weights_before_call_K.pt` (ZeRO-1/2 keep full parameters on every rank).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import lightning as L
import torch


def _calls(text: str | None) -> range:
    if not text:
        return range(0)
    a, b = text.split(":")
    return range(int(a), int(b))


def _run_dir(argv: list[str]) -> Path:
    for arg in argv:
        if arg.startswith("run.dir="):
            return Path(arg.split("=", 1)[1])
    raise SystemExit("hooked_fit: run.dir=... is required")


class CountAllReduce(L.Callback):
    def __init__(self, out: Path):
        self.out, self.calls, self.per_episode = out, 0, []

    def on_train_start(self, trainer, pl_module):
        from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

        def counting(state, bucket):
            self.calls += 1
            return allreduce_hook(state, bucket)

        trainer.strategy.model.register_comm_hook(None, counting)  # before the first backward

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.per_episode.append(self.calls)
        self.calls = 0
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / f"allreduce_rank{trainer.global_rank}.txt").write_text("".join(f"{n}\n" for n in self.per_episode))


class PoisonCalls(L.Callback):
    """NaN losses on `nan` calls; finite losses with an inf gradient on `inf_grad` calls."""

    def __init__(self, out: Path, nan: range, inf_grad: range, save_before: int | None):
        self.out, self.nan, self.inf_grad, self.save_before, self.k = out, nan, inf_grad, save_before, 0

    def setup(self, trainer, pl_module, stage):
        model = pl_module.model
        forward = model.forward

        def poisoned(input_ids, state=None, labels=None):
            k, self.k = self.k, self.k + 1
            if k == self.save_before and trainer.is_global_zero:
                self.out.mkdir(parents=True, exist_ok=True)
                torch.save(model.lm_head.weight.detach().clone(), self.out / f"weights_before_call_{k}.pt")
            out = forward(input_ids, state=state, labels=labels)
            if k in self.nan:
                out.loss = out.loss * float("nan")
            if k in self.inf_grad:
                out.loss = out.loss + 0.0 * _InfGrad.apply(model.lm_head.weight).sum()
            return out

        model.forward = poisoned


class _InfGrad(torch.autograd.Function):
    """Identity forward; its backward returns inf (the forward value stays finite)."""

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return torch.full_like(grad, float("inf"))


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--deepspeed-cpu", action="store_true")
    p.add_argument("--count-allreduce", action="store_true")
    p.add_argument("--nan-calls")
    p.add_argument("--inf-grad-calls")
    p.add_argument("--save-weights-before", type=int)
    args, rest = p.parse_known_args(argv)
    if args.deepspeed_cpu:
        from tests import deepspeed_cpu

        deepspeed_cpu.apply()
    from stuffed_mamba.training import fit as fit_module

    out = _run_dir(rest) / "hooks"
    callbacks = []
    if args.count_allreduce:
        callbacks.append(CountAllReduce(out))
    if args.nan_calls or args.inf_grad_calls or args.save_weights_before is not None:
        callbacks.append(
            PoisonCalls(out, _calls(args.nan_calls), _calls(args.inf_grad_calls), args.save_weights_before)
        )

    original = fit_module.fit

    def fit_with_hooks(cfg, **kw):
        return original(cfg, **{**kw, "extra_callbacks": [*kw.get("extra_callbacks", ()), *callbacks]})

    fit_module.fit = fit_with_hooks  # the CLI imports it at call time
    from stuffed_mamba.cli import main as cli_main

    return cli_main(rest)


if __name__ == "__main__":
    sys.exit(main())
