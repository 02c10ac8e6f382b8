"""`stuffed-mamba fit RECIPE [key=value ...]` (contract): train a recipe."""

from __future__ import annotations

import argparse

from stuffed_mamba.cli import CLIError


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "fit",
        help="train a recipe (YAML) with key=value overrides",
        description="Train a recipe: YAML sections model, data, optim, trainer, probes, run; "
        "overrides such as trainer.max_steps=100 run.dir=runs/x run.resume=auto are merged on top.",
    )
    p.add_argument("recipe", help="recipe YAML, e.g. recipes/tiny_cpu.yaml")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="recipe overrides")
    p.add_argument(
        "--print-config",
        action="store_true",
        help="print the validated recipe with the values the run will use (model defaults, vocab_size, max_steps) and exit",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from stuffed_mamba.training.config import ConfigError, load_recipe, to_yaml

    try:
        cfg = load_recipe(args.recipe, args.overrides)
    except ConfigError as e:
        raise CLIError(str(e)) from None
    if args.print_config:
        from stuffed_mamba.training.config import resolved

        print(to_yaml(resolved(cfg, _vocab_size_offline(cfg.data.tokenizer))), end="")
        return 0

    from stuffed_mamba.training.slurm_env import apply_task_environment

    slurm_line = apply_task_environment()  # under Slurm: rendezvous, threads, NCCL, before Lightning reads them
    from lightning.pytorch.utilities.rank_zero import rank_zero_only

    from stuffed_mamba.training.fit import fit
    from stuffed_mamba.training.module import NonFiniteLossError

    say = rank_zero_only(lambda s: print(s, flush=True))
    if slurm_line is not None:
        say(slurm_line)
    try:
        result = fit(cfg, recipe=args.recipe, log=lambda s: print(s, flush=True))
    except ConfigError as e:
        raise CLIError(str(e)) from None
    except NonFiniteLossError as e:
        print(f"stuffed-mamba fit: aborted: {e}", flush=True)
        return 1
    if result.already_complete:
        say(
            f"{cfg.run.dir} is already complete at optimiser step {result.global_step} (trainer.max_steps): nothing "
            f"to do. For more steps raise trainer.max_steps, and optim.total_steps with it (the schedule's length; "
            f"past it the LR stays at optim.min_lr_ratio x lr): "
            + _command(
                args, cfg, f"trainer.max_steps={2 * result.global_step}", f"optim.total_steps={2 * result.global_step}"
            )
        )
        return 0
    loss = "n/a" if result.final_loss is None else f"{result.final_loss:.4f}"
    say(
        f"done: {result.global_step} optimiser steps, {result.episodes} episodes, {result.tokens:,} tokens "
        f"in {result.seconds:.0f} s; last episode mean loss {loss}; non-finite steps skipped {result.nonfinite_skipped}"
        + ("; requeued" if result.requeued else "")
    )
    say(f"checkpoint: {result.checkpoint}")
    if result.interrupted:
        say(
            f"interrupted (Ctrl-C) at optimiser step {result.global_step}, an episode boundary; continue with: "
            + _command(args, cfg)
        )
    for line in next_steps(result, cfg.run.dir):
        say(line)
    return 130 if result.interrupted else 0


def next_steps(result, run_dir) -> list[str]:
    """The run's last lines: the commands that watch, evaluate and export this run's checkpoint."""
    import shlex

    lines = [f"watch:    tensorboard --logdir {shlex.quote(str(result.tensorboard_dir))}"]
    if result.checkpoint:
        ckpt = shlex.quote(str(result.checkpoint))
        lines += [
            f"evaluate: stuffed-mamba eval loss --checkpoint {ckpt}   (probes: stuffed-mamba eval --help)",
            f"export:   stuffed-mamba export {ckpt} {shlex.quote(str(run_dir) + '/export')}",
        ]
    return lines


def _vocab_size_offline(spec: str) -> int | None:
    """The tokenizer's vocabulary when it is at hand (a file, "bytes", the HuggingFace cache); printing
    the config never downloads, and a bad tokenizer is reported by fit itself."""
    from stuffed_mamba.data import load_tokenizer
    from stuffed_mamba.data.paths import resolve_local

    try:
        if spec == "bytes" or resolve_local(spec) is not None:
            return load_tokenizer(spec).vocab_size
        import huggingface_hub as hub
        from tokenizers import Tokenizer

        cached = hub.try_to_load_from_cache(spec, "tokenizer.json")
        return Tokenizer.from_file(cached).get_vocab_size(with_added_tokens=True) if isinstance(cached, str) else None
    except Exception:  # noqa: BLE001
        return None


def _command(args: argparse.Namespace, cfg, *extra: str) -> str:
    """The command line that continues this run (run.resume=auto), with `extra` overrides replacing theirs."""
    import shlex

    keys = {e.split("=", 1)[0] for e in extra}
    if cfg.run.resume != "auto":
        keys.add("run.resume")
        extra = (*extra, "run.resume=auto")
    kept = [o for o in args.overrides if o.split("=", 1)[0] not in keys]
    return shlex.join(["stuffed-mamba", "fit", args.recipe, *kept, *extra])
