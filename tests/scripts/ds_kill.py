"""Test-only: `python -m tests.scripts.ds_kill fit ...` is `python -m tests.deepspeed_cpu fit ...` plus a
SIGKILL of the whole run (the process group, as Slurm kills a job) at one moment of a checkpoint save:

    STUFFED_MAMBA_TEST_KILL=write:N            rank 0 inside DeepSpeed's N-th save, after the model
                                               states and before the optimizer shards are written
    STUFFED_MAMBA_TEST_KILL=between_renames:N  between `last.ckpt -> .old` and `.tmp -> last.ckpt`,
                                               the N-th time a folder is renamed into place

Lightning re-launches `python -m tests.scripts.ds_kill ...` for the other ranks, so all get the shims.
"""

from __future__ import annotations

import os
import signal
import sys

from tests import deepspeed_cpu


def _kill_run() -> None:
    sys.stdout.flush()
    os.killpg(os.getpgrp(), signal.SIGKILL)


def apply() -> None:
    deepspeed_cpu.apply()
    spec = os.environ.get("STUFFED_MAMBA_TEST_KILL")
    if not spec:
        return
    moment, nth = spec.split(":")
    calls = {"n": 0}

    def due() -> bool:
        calls["n"] += 1
        return calls["n"] == int(nth)

    if moment == "write":
        from deepspeed.runtime.engine import DeepSpeedEngine

        original = DeepSpeedEngine._save_zero_checkpoint

        def _save_zero_checkpoint(self, save_path, tag):
            if self.global_rank == 0 and due():
                print(f"[ds_kill] killing the run inside save {nth}, before the optimizer shards", flush=True)
                _kill_run()
            return original(self, save_path, tag)

        DeepSpeedEngine._save_zero_checkpoint = _save_zero_checkpoint
    elif moment == "between_renames":
        from stuffed_mamba.training import checkpoint

        def _test_hook(at: str) -> None:
            if at == "between_renames" and due():
                print(f"[ds_kill] killing the run between the two renames of save {nth}", flush=True)
                _kill_run()

        checkpoint._test_hook = _test_hook
    else:
        raise SystemExit(f"STUFFED_MAMBA_TEST_KILL: unknown moment {moment!r}")


def main(argv: list[str] | None = None) -> int:
    apply()
    from stuffed_mamba.cli import main as cli_main

    return cli_main(argv if argv is not None else sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
