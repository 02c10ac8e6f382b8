"""The `stuffed-mamba` console script.

Each command group lives in its own module and registers its sub-parsers through
`add_parser(subparsers)`; heavy imports (torch, lightning, datasets) happen inside
the command functions, so `stuffed-mamba --help` and argument errors are instant.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from stuffed_mamba import early_signals

# command name -> module under stuffed_mamba.cli that defines add_parser(subparsers)
_COMMANDS = {
    "fit": "fit",
    "eval": "eval",
    "data": "data",
    "analyze": "analyze",
    "export": "export",
    "doctor": "doctor",
}


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """argv: when given, command groups may skip building the sub-parsers of other commands."""
    parser = argparse.ArgumentParser(
        prog="stuffed-mamba",
        description="Extend Mamba-2 language models to long contexts and watch whether they learn to forget.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module in _COMMANDS.items():
        mod = importlib.import_module(f"stuffed_mamba.cli.{module}")
        if name == "eval":
            mod.add_parser(sub, argv)
        else:
            mod.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    console = argv is None  # the console command itself, not a call from Python
    argv = sys.argv[1:] if console else list(argv)
    if console and "SLURM_JOB_ID" in os.environ:
        early_signals.catch()  # a Slurm USR1 during start-up must not kill this rank (early_signals.py)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    if console:  # --help and usage errors exited above, before the re-execution
        from stuffed_mamba.allocator import reexec_under_jemalloc

        reexec_under_jemalloc()  # execve resets the recorder: the new process installs it again above
        if args.command != "fit":
            early_signals.release()
    try:
        rc = args.func(args)
    except KeyboardInterrupt:
        return 130
    except CLIError as e:
        print(f"stuffed-mamba {args.command}: error: {e}", file=sys.stderr)
        return 2
    return int(rc or 0)


class CLIError(Exception):
    """An error the user can fix; printed as one line without a traceback."""


if __name__ == "__main__":
    sys.exit(main())
