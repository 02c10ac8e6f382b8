"""The LightningModule: one `training_step` = one episode of S segments, truncated or full BPTT.

Paper appendix F: each row of an episode is S = 12 consecutive segments of T_train tokens; the recurrent state
(SSM and conv) at the end of a segment is the initial state of the next, detached, so gradients stop at segment
boundaries; an episode starts from zeros, or as `optim.initial_state` says (training/initial_state.py).
`optim.bptt: full` (with `optimizer_step: episode`) back-propagates exactly through the boundaries instead
(training/bptt.py). The network is injected (`TBPTTModule(model, ...)`): the model knows nothing of Lightning,
and probes find it as `pl_module.model`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from typing import Any

import lightning as L
import torch

from stuffed_mamba.training import context_parallel as cp
from stuffed_mamba.training.backward import make_backward
from stuffed_mamba.training.bptt import backward_episode
from stuffed_mamba.training.config import OptimConfig
from stuffed_mamba.training.initial_state import InitialState
from stuffed_mamba.training.optim import build_adamw
from stuffed_mamba.training.schedule import wsd_lambda
from stuffed_mamba.training.strategy import deepspeed_engine, is_deepspeed


class NonFiniteLossError(RuntimeError):
    """Too many non-finite steps in a row; the message says which checkpoint predates them."""


class TBPTTModule(L.LightningModule):
    def __init__(
        self, model: torch.nn.Module, optim: OptimConfig, *, log_every_n_steps: int = 1, context_parallel: int = 1
    ):
        super().__init__()
        self.model = model
        self.context_parallel = context_parallel  # N ranks share each row (training/context_parallel.py)
        self.optim_cfg = optim
        self.initial_state = InitialState.from_optim(optim, model.config, seed=torch.initial_seed())
        self.log_every_n_steps = log_every_n_steps
        # Several backward passes per training_step and a schedule of our own.
        self.automatic_optimization = False
        # Counters that live in the checkpoint (batch_idx restarts at 0 on resume).
        self.episodes_done = 0
        self.tokens_seen = 0
        self.nonfinite_total = 0
        self.nonfinite_streak = 0
        self.nonfinite_first_step: int | None = None
        self._grad_norms: list[float] = []
        self.last_loss: float | None = None  # this rank's mean loss of its last episode, every episode

    # ------------------------------------------------------------------ the loop

    def training_step(self, dataloader_iter: Iterator) -> None:
        # Fetching the episode ourselves means Lightning prefetches nothing: the data
        # position saved in a checkpoint is exactly after this episode (no skip on resume).
        episode, _, _ = next(dataloader_iter)
        episode = episode.to(self.device, non_blocking=True)  # [B, S, T+1]
        inputs, labels = episode[..., :-1], episode[..., 1:]  # [B, S, T] each: labels[t] = inputs[t+1]
        group = cp.group(self.context_parallel)
        inputs, labels = cp.pieces(group, inputs, labels)  # this rank's T/N tokens of each segment
        B, S, T = inputs.shape
        opt = self.optimizers()
        step_per_segment = self.optim_cfg.optimizer_step == "segment"
        step_before, t0 = self.global_step, time.perf_counter()

        # DDP's all-reduce and DeepSpeed's accumulation boundary happen at `last` only.
        backward = make_backward(self)
        if step_per_segment:
            episode_backward = backward

            def backward(tensors, grad_tensors, *, last):  # the paper's: a step after every segment
                episode_backward(tensors, grad_tensors, last=True)
                self._optimizer_step(opt)

        # A non-finite loss on any rank is back-propagated as NaN on every rank (the same calls
        # everywhere), so the step skips under every strategy: clip norm, DeepSpeed's overflow check.
        with cp.split_over(group):
            losses, state = backward_episode(
                self.model,
                inputs,
                labels,
                mode=self.optim_cfg.bptt,
                backward=backward,
                all_finite=self._finite_on_every_rank,
                scale=1.0 if step_per_segment else None,
                return_state=True,
                initial_state=self.initial_state.begin(B, self.device, self.global_rank // self.context_parallel),
            )
        self.initial_state.end(state)
        losses = cp.group_mean(losses, group).cpu()
        if not step_per_segment:
            self._optimizer_step(opt)  # the gradient of the episode's mean loss

        self.episodes_done += 1
        self.tokens_seen += B * S * T * self.trainer.world_size  # T: this rank's piece, each token once
        finite = losses[torch.isfinite(losses)]
        self.last_loss = float(finite.mean()) if finite.numel() else None
        # optimiser steps, like every other *_every_n_steps: log when this episode crossed a multiple
        if self.global_step // self.log_every_n_steps > step_before // self.log_every_n_steps:
            self._log_episode(losses, state, B * S * T, time.perf_counter() - t0)

    def _finite_on_every_rank(self, losses: torch.Tensor) -> bool:
        # All ranks decide together, so all of them poison their backward or none does.
        return self.trainer.strategy.reduce_boolean_decision(bool(torch.isfinite(losses).all()), all=True)

    def _optimizer_step(self, opt) -> None:
        """Schedule, clip, step, zero-grad: one optimiser step (global_step += 1)."""
        lr = self.optim_cfg.lr * wsd_lambda(
            self.global_step,
            warmup_steps=self.optim_cfg.warmup_steps,
            total_steps=self.optim_cfg.total_steps,
            decay_fraction=self.optim_cfg.decay_fraction,
            decay=self.optim_cfg.decay,
            min_lr_ratio=self.optim_cfg.min_lr_ratio,
        )
        for group in opt.param_groups:
            group["lr"] = lr
        grad_norm = self._clip_gradients()
        if grad_norm is not None and not math.isfinite(grad_norm):
            self._skip_step(opt)
            return
        engine = deepspeed_engine(self.trainer.strategy)
        skipped_before = engine.skipped_steps if engine is not None else 0
        opt.step()
        opt.zero_grad(set_to_none=True)
        if engine is not None:
            # DeepSpeed clips inside its step and skips it itself on a non-finite gradient (its
            # overflow check zeroes the gradients): same accounting as above, and not an
            # optimiser step, as under DDP.
            if engine.skipped_steps > skipped_before:
                _uncount_optimizer_step(self.trainer)
                self._skip_step(opt)
                return
            grad_norm = engine.get_global_grad_norm()
        if grad_norm is not None:
            self._grad_norms.append(float(grad_norm))
        self.nonfinite_streak = 0
        self.nonfinite_first_step = None

    def _clip_gradients(self) -> float | None:
        """Global grad norm before clipping (None under DeepSpeed, which clips in its own step
        through `gradient_clipping` in its config: Lightning's clip is a no-op there)."""
        if is_deepspeed(self.trainer.strategy):
            return None
        max_norm = self.optim_cfg.grad_clip if self.optim_cfg.grad_clip > 0 else float("inf")
        # Under DDP the gradients are already all-reduced: every rank gets the same norm.
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm)
        return float(norm)

    def _skip_step(self, opt) -> None:
        """A non-finite loss or gradient: no update, counted; K in a row abort the run."""
        opt.zero_grad(set_to_none=True)
        self.nonfinite_total += 1
        if self.nonfinite_streak == 0:
            self.nonfinite_first_step = self.global_step
        self.nonfinite_streak += 1
        if self.nonfinite_streak >= self.optim_cfg.max_nonfinite_in_a_row:
            raise NonFiniteLossError(
                f"{self.nonfinite_streak} non-finite losses/gradients in a row, the first at optimiser step "
                f"{self.nonfinite_first_step}; no update was made since, and the last checkpoint "
                f"(run.dir/checkpoints/last.ckpt, if any) predates them (optim.max_nonfinite_in_a_row="
                f"{self.optim_cfg.max_nonfinite_in_a_row})"
            )

    # ------------------------------------------------------------------ logging

    def _log_episode(self, losses: torch.Tensor, state, tokens_per_rank: int, seconds: float) -> None:
        # Per-segment losses: a carried state should make later segments' loss lower, the
        # first health signal of TBPTT. One collective averages them over ranks.
        S = losses.numel()
        finite = torch.isfinite(losses)
        vec = torch.stack([torch.where(finite, losses, torch.zeros(())), finite.float()]).to(self.device)
        vec = self.trainer.strategy.reduce(vec, reduce_op="sum")
        sums, counts = vec[0].cpu(), vec[1].cpu()
        seg_loss = sums / counts.clamp_min(1)
        metrics: dict[str, float] = {}
        for s in range(S):
            if counts[s] > 0:
                metrics[f"loss_segment/{s:02d}"] = float(seg_loss[s])
        if counts.sum() > 0:
            metrics["train/loss"] = float(sums.sum() / counts.sum())
            self.log("loss", metrics["train/loss"], prog_bar=True, logger=False, batch_size=1, rank_zero_only=True)
        opt = self.optimizers()
        metrics["train/lr"] = float(opt.param_groups[0]["lr"])
        if self._grad_norms:
            metrics["train/grad_norm"] = sum(self._grad_norms) / len(self._grad_norms)
            self._grad_norms.clear()
        metrics["train/tokens_per_s"] = tokens_per_rank * self.trainer.world_size / max(seconds, 1e-9)
        metrics["train/tokens_seen"] = float(self.tokens_seen)
        metrics["train/episodes"] = float(self.episodes_done)
        metrics["train/nonfinite_skipped"] = float(self.nonfinite_total)
        if state is not None:
            for i, layer in enumerate(state.layers):
                # RMS of the SSM state h_t at the end of the episode (S*T tokens in).
                metrics[f"state_rms/layer_{i:02d}"] = float(layer.ssm.float().pow(2).mean().sqrt())
        metrics.update(_data_counters(self.trainer))
        if self.logger is not None:
            # Logged at global_step explicitly: self.log of one key S times per step would
            # keep only the last value, at a step that is not the optimiser step.
            self.logger.log_metrics(metrics, step=self.global_step)
        self.last_metrics = metrics
        if self.trainer.progress_bar_callback is None and self.trainer.is_global_zero:
            # batch jobs (Slurm logs) get one line per logged episode instead of a bar
            loss = metrics.get("train/loss", float("nan"))
            print(
                f"step {self.global_step} episode {self.episodes_done} loss {loss:.4f} lr {metrics['train/lr']:.3g} "
                f"tokens/s {metrics['train/tokens_per_s']:.0f}",
                flush=True,
            )

    # ------------------------------------------------------------------ optimiser

    def configure_optimizers(self):
        o = self.optim_cfg
        return build_adamw(self.model, lr=o.lr, betas=o.betas, eps=o.eps, weight_decay=o.weight_decay)

    # ------------------------------------------------------------------ checkpoints

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Runs on every rank (only rank 0 writes): gather each rank's data position, or every
        # rank would resume from rank 0's.
        loader = _train_loader(self.trainer)
        own = loader.state_dict() if loader is not None and hasattr(loader, "state_dict") else None
        checkpoint["data_state_per_rank"] = _all_gather_object(own, self.trainer.world_size)
        checkpoint["world_size"] = self.trainer.world_size
        checkpoint["initial_state"] = _all_gather_object(self.initial_state.state_dict(), self.trainer.world_size)
        checkpoint["rng_per_rank"] = _all_gather_object(torch.get_rng_state(), self.trainer.world_size)
        checkpoint["tbptt"] = {
            "episodes_done": self.episodes_done,
            "tokens_seen": self.tokens_seen,
            "nonfinite_total": self.nonfinite_total,
        }
        checkpoint["mamba2_config"] = self.model.config.to_dict()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        counters = checkpoint.get("tbptt", {})
        self.episodes_done = counters.get("episodes_done", 0)
        self.tokens_seen = counters.get("tokens_seen", 0)
        self.nonfinite_total = counters.get("nonfinite_total", 0)
        rank, world = self.trainer.global_rank, self.trainer.world_size
        states = checkpoint.get("data_state_per_rank")
        saved_world = checkpoint.get("world_size", world)
        if states is not None:
            if saved_world != world:
                raise RuntimeError(
                    f"checkpoint was written by {saved_world} ranks, this run has {world}: each rank's data "
                    f"position cannot be restored; resume with the same number of devices x nodes"
                )
            if states[rank] is not None:
                # Lightning restores the loader from rank 0's state; put this rank's own in its place.
                fit_loop = checkpoint.setdefault("loops", {}).setdefault("fit_loop", {})
                fit_loop.setdefault("state_dict", {})["combined_loader"] = [states[rank]]
        self.initial_state.load_from_ranks(checkpoint.get("initial_state"), rank)
        rngs = checkpoint.get("rng_per_rank")
        if rngs is not None and len(rngs) == world:
            torch.set_rng_state(rngs[rank])


# ---------------------------------------------------------------------- helpers


def _uncount_optimizer_step(trainer) -> None:
    """Undo Lightning's count of an `optimizer.step()` that DeepSpeed skipped (global_step is
    read from this progress tracker under manual optimisation)."""
    progress = trainer.fit_loop.epoch_loop.manual_optimization.optim_step_progress
    for tracker in (progress.total, progress.current):
        tracker.ready -= 1
        tracker.completed -= 1


def _train_loader(trainer):
    """The datamodule's loader, else the one passed to fit() (Lightning's public `train_dataloader`)."""
    loader = getattr(getattr(trainer, "datamodule", None), "loader", None)
    if loader is None:
        loader = getattr(trainer, "train_dataloader", None)
    if isinstance(loader, (list, tuple)):
        loader = loader[0] if loader else None
    return loader


def _data_counters(trainer) -> dict[str, float]:
    loader = _train_loader(trainer)
    counters = getattr(loader, "counters", None)
    if counters is None:
        return {}
    values = counters() if callable(counters) else counters
    return {f"data/{k}": float(v) for k, v in dict(values).items() if isinstance(v, (int, float))}


def _all_gather_object(obj, world_size: int) -> list:
    if world_size == 1 or not torch.distributed.is_available() or not torch.distributed.is_initialized():
        return [obj]
    out = [None] * world_size
    torch.distributed.all_gather_object(out, obj)
    return out
