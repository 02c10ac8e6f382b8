"""Preflight checks of `stuffed-mamba doctor RECIPE [key=value ...]`: what a minute on the machine
where a job will run can show before the job spends a day finding it out.

One function per check, in this order; each returns a one-line detail or raises `Fail(reason)`,
`Warn(what was substituted)` (it ran, but not as the recipe asks: another strategy, backend or
accelerator; never ok) or `Skip(reason)`; `run_checks` times them and turns any other exception into a failing line with its
first line, never a traceback:

    recipe      the recipe and overrides validate (the rest is skipped if not); WARN  checks.py
                when this machine lacks the GPUs it asks for
    tokenizer   `data.tokenizer` loads (a hub name: the hub is asked once, 3 s; if   checks.py
                it does not answer, HF_HUB_OFFLINE=1 for the rest: the cache only)
    data        `data.source` answers: its listing, and the first document of its    checks.py
                first shard
    init_from   `model.init_from` loads and agrees with the recipe (or is absent)     checks.py
    kernels     the recipe's backend imports and gives the torch backend's logits,   kernels.py
                final states and gradients on this device, on a tiny model
    collective  the process group all-reduces: NCCL on CUDA, gloo on CPU, 2 ranks    collective.py
                (1 on one GPU)
    fit         a tiny model (2 layers, d_model 32), 2 episodes of 2 segments of 32  tiny_fit.py
                tokens on the packaged sample corpus, with the recipe's strategy,
                precision and backend on the available devices: one episode, a
                checkpoint, `run.resume=auto` for the second, then the checkpoint
                read back as `eval` reads it. Real `stuffed-mamba fit` processes.
                WARN naming each substitute (accelerator, strategy, backend) when
                this machine cannot run the recipe's
    memory      free memory per device against the estimate of                       memory.py
                `stuffed_mamba.analysis.memory` for the recipe

A new check is a function `check_NAME(ctx: Context) -> str` in one of these modules plus its line
in `CHECKS` (and in `stuffed_mamba.cli.doctor.CHECK_NAMES`, which --help shows without torch).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from stuffed_mamba.errors import first_line
from stuffed_mamba.training.doctor.checks import check_data, check_init_from, check_recipe, check_tokenizer
from stuffed_mamba.training.doctor.collective import check_collective
from stuffed_mamba.training.doctor.context import Context, Fail, Result, Skip, Warn
from stuffed_mamba.training.doctor.kernels import check_kernels
from stuffed_mamba.training.doctor.memory import check_memory
from stuffed_mamba.training.doctor.tiny_fit import check_fit

__all__ = [
    "CHECKS",
    "Context",
    "Fail",
    "Result",
    "Skip",
    "Warn",
    "check_collective",
    "check_data",
    "check_fit",
    "check_init_from",
    "check_kernels",
    "check_memory",
    "check_recipe",
    "check_tokenizer",
    "run_checks",
]

CHECKS: list[tuple[str, Callable[[Context], str]]] = [
    ("recipe", check_recipe),
    ("tokenizer", check_tokenizer),
    ("data", check_data),
    ("init_from", check_init_from),
    ("kernels", check_kernels),
    ("collective", check_collective),
    ("fit", check_fit),
    ("memory", check_memory),
]


def run_checks(
    recipe: str, overrides: list[str], *, skip: tuple[str, ...] = (), on_result: Callable[[Result], None] | None = None
) -> list[Result]:
    ctx = Context(recipe, overrides)
    results = []
    for name, check in CHECKS:
        t0 = time.perf_counter()
        try:
            if name in skip:
                raise Skip("skipped on request (--skip)")
            status, detail = "ok", check(ctx)
            ctx.passed.add(name)
        except Warn as e:
            status, detail = "WARN", str(e)
            ctx.passed.add(name)  # it ran: the checks that need it run too
        except Skip as e:
            status, detail = "skip", str(e)
        except Fail as e:
            status, detail = "FAIL", str(e)
        except Exception as e:  # noqa: BLE001 - a check's own bug or an unforeseen error: still one line
            status, detail = "FAIL", f"{type(e).__name__}: {first_line(e)}"
        results.append(Result(name, status, time.perf_counter() - t0, detail))
        if on_result is not None:
            on_result(results[-1])
    return results
