"""`stuffed-mamba doctor RECIPE [key=value ...]` (contract): preflight checks on this machine."""

from __future__ import annotations

import argparse
import sys

# the check names of stuffed_mamba.training.doctor.CHECKS (kept here: --help imports no torch)
CHECK_NAMES = ("recipe", "tokenizer", "data", "init_from", "kernels", "collective", "fit", "memory")


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "doctor",
        help="check a recipe on this machine before a long job (about a minute)",
        description="Preflight: the recipe validates, the tokenizer loads, the data source answers, "
        "model.init_from loads, the backend's kernels match the torch backend, the collective "
        "all-reduces, a tiny fit with the recipe's strategy and precision saves, resumes and is read "
        "back, and free memory covers the estimated need. One line per check: ok, WARN (ran, but with "
        "a substitute for what the recipe asks: strategy, backend or accelerator), FAIL or skip; exit 1 "
        "if any fails, else 0 (WARN included).",
    )
    p.add_argument("recipe", help="recipe YAML, e.g. recipes/mamba2_370m_256k.yaml")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="recipe overrides, as for fit")
    p.add_argument(
        "--skip",
        action="append",
        default=[],
        choices=CHECK_NAMES,
        metavar="CHECK",
        help=f"leave a check out (repeatable): {', '.join(CHECK_NAMES)}",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from stuffed_mamba.training.doctor import run_checks

    print(f"stuffed-mamba doctor {args.recipe} {' '.join(args.overrides)}".rstrip(), flush=True)
    print(f"{'check':<11} {'status':<6} {'seconds':>7}  detail", flush=True)

    def show(r) -> None:
        print(f"{r.name:<11} {r.status:<6} {r.seconds:7.1f}  {r.detail}", flush=True)

    results = run_checks(args.recipe, args.overrides, skip=tuple(args.skip), on_result=show)
    failed = [r.name for r in results if r.status == "FAIL"]
    if failed:
        print(f"stuffed-mamba doctor: {len(failed)} check(s) failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    warned = [r.name for r in results if r.status == "WARN"]
    skipped = sum(r.status == "skip" for r in results)
    if warned:
        print(f"no check failed; {len(warned)} ran with a substitute (WARN: {', '.join(warned)}), {skipped} skipped")
    else:
        print(f"all checks passed ({skipped} skipped)")
    return 0
