"""The start-up report: what is about to be trained, and whether T_train can teach forgetting."""

from __future__ import annotations

import json

from stuffed_mamba.allocator import describe as describe_allocator
from stuffed_mamba.training.config import RecipeConfig


def startup_report(
    cfg: RecipeConfig, model, *, world_size: int, resume_from: str | None, recipe: str | None, changes: list[str] = ()
) -> list[str]:
    """Lines to print on rank 0 before training. The last lines may be WARNINGs. `changes`: the recipe
    keys that differ from the resumed run's (`key: old -> new`)."""
    from stuffed_mamba.analysis import forget_threshold_warning, predicted_thresholds

    c, d, o, t = model.config, cfg.data, cfg.optim, cfg.trainer
    n_params = model.num_parameters()
    pred = predicted_thresholds(c)
    n_s = pred["state_size"]
    ssm = c.ssm_state_size
    B, S, T = d.batch_size, d.segments, d.train_length
    data_world = world_size // t.context_parallel  # the ranks of a context-parallel group share rows
    per_step = B * T * data_world if o.optimizer_step == "segment" else B * S * T * data_world
    max_steps = t.max_steps if t.max_steps is not None else o.total_steps
    lines = [
        f"recipe       {recipe or '(none)'}",
        f"model        Mamba-2 d_model={c.d_model} n_layer={c.n_layer} d_state={c.d_state} headdim={c.headdim} "
        f"nheads={c.nheads} vocab={c.vocab_size} (padded {c.vocab_size_padded}); backend {cfg.model.backend}"
        f"{', activation checkpointing' if cfg.model.activation_checkpointing else ''}",
        f"parameters   {n_params:,} ({_human(n_params)})"
        f"{'; init from ' + cfg.model.init_from if cfg.model.init_from else '; from scratch (seed ' + str(cfg.run.seed) + ')'}",
        f"state size   N_S = {n_s:,} floats ({n_s / 1e6:.3f}M: SSM {ssm:,} + conv {n_s - ssm:,})",
        f"episode      {B} rows x {S} segments x T_train={T} tokens per rank; {world_size} rank(s)"
        + (
            f", context parallel: {t.context_parallel} ranks share each row, {T // t.context_parallel} tokens each"
            if t.context_parallel > 1
            else ""
        ),
        f"tokens/step  {per_step:,} (optimizer_step: {o.optimizer_step})",
        "gradient     " + _horizon(o.bptt, S, T),
        f"schedule     AdamW lr {o.lr:g} wd {o.weight_decay:g} clip {o.grad_clip:g}; WSD warm-up {o.warmup_steps}, "
        f"total {o.total_steps}, {o.decay} decay over the last {o.decay_fraction:.0%}; this job stops at step {max_steps}",
        "covers       " + _coverage(o.total_steps, o.optimizer_step, S, per_step),
        f"trainer      strategy {t.strategy}, precision {t.precision}, accelerator {t.accelerator}, "
        f"devices {t.devices}, nodes {t.num_nodes}",
        f"allocator    {describe_allocator()}",
        f"run dir      {cfg.run.dir} (checkpoints/last.ckpt; TensorBoard: tensorboard --logdir {cfg.run.dir}/tensorboard)",
        f"resume       {resume_from or 'no: fresh start'}",
        *([f"changed      since the checkpoint: {'; '.join(changes)}"] if changes else []),
        "predicted    " + _predicted(pred),
    ]
    if t.strategy == "deepspeed":
        from stuffed_mamba.training.strategy import deepspeed_config

        lines.append("deepspeed    " + json.dumps(deepspeed_config(cfg), sort_keys=True))
    warning = forget_threshold_warning(c, T, segments=S, bptt=o.bptt)
    if warning:
        lines.append("WARNING: " + warning)
    warning = schedule_unit_warning(cfg, recipe)
    if warning:
        lines.append("WARNING: " + warning)
    return lines


def _coverage(steps: int, unit: str, S: int, per_step: int) -> str:
    """What `steps` optimiser steps of `unit` ("segment" | "episode") train on: episodes and tokens."""
    episodes = steps / S if unit == "segment" else steps
    return f"the schedule's {steps:,} {unit} steps = {episodes:,g} episodes, {steps * per_step:,} tokens"


def schedule_unit_warning(cfg: RecipeConfig, recipe: str | None) -> str | None:
    """One line when the recipe file counts its schedule in segment steps but this run steps once per
    episode (an override, e.g. for optim.bptt=full) and keeps the file's optim.total_steps: the same
    number now means S times the episodes and tokens."""
    from stuffed_mamba.training.config import ConfigError, load_recipe

    o = cfg.optim
    if recipe is None or o.optimizer_step != "episode":
        return None
    try:
        written = load_recipe(recipe).optim
    except (ConfigError, OSError):
        return None
    if written.optimizer_step != "segment" or written.total_steps != o.total_steps:
        return None
    S = cfg.data.segments
    return (
        f"optim.total_steps={o.total_steps} is written in {recipe} for optimizer_step segment "
        f"({o.total_steps / S:g} episodes) but this run steps once per episode: it covers {o.total_steps} episodes, "
        f"{S}x the tokens. For the recipe's tokens add optim.total_steps={max(1, round(o.total_steps / S))} "
        f"optim.warmup_steps={max(1, round(o.warmup_steps / S))}"
    )


def _horizon(bptt: str, S: int, T: int) -> str:
    if bptt == "full":
        return (
            f"horizon {S * T:,} tokens (full BPTT: exact through {S} segments x {T}, at one segment's "
            f"memory plus {S} boundary states, {S - 1} extra segment forwards)"
        )
    return f"horizon {T:,} tokens (truncated BPTT: stops at segment boundaries; the state carries {S} x {T})"


def _human(n: float) -> str:
    for unit, div in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= div:
            return f"{n / div:.2f}{unit}"
    return str(int(n))


def _predicted(pred: dict) -> str:
    # The paper's fits cross zero (T_forget near N_S = 0.86M floats, T_recall near 0.47M): below
    # that they extrapolate to negative lengths, which must not read as a prediction.
    def value(t):
        return f"{t / 1e3:.1f}K tokens" if t > 0 else "n/a (N_S below the fit's range)"

    return (
        f"T_forget = {value(pred['t_forget'])}, T_recall = {value(pred['t_recall'])} "
        f"(paper section 5 fits, for N_S = {pred['state_size'] / 1e6:.3f}M floats)"
    )
