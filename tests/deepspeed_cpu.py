"""Test-only: the real DeepSpeed engine on the CPU (gloo), like the Triton-interpreter shims of
tests/kernels. Never imported by the product.

Lightning's DeepSpeedStrategy refuses a CPU accelerator through three checks, and nothing else
in the engine needs CUDA once DeepSpeed's own CPU accelerator is selected (`DS_ACCELERATOR=cpu`).
Measured with Lightning 2.6 and DeepSpeed 0.19 (docs/design.md, DESIGN.md section 9):

1. `DeepSpeedStrategy.setup_environment` raises unless the accelerator is CUDA: use the DDP
   parent's `setup_environment`, which is all it calls after the check.
2. `_validate_device_index_selection` (imported into both the pytorch and the fabric strategy
   modules) rejects the CPU device index `None`: a no-op.
3. `DeepSpeedEngine._set_distributed_vars` compares `args.device_rank` (Lightning passes
   `root_device.index`, None on CPU) with 0: read `LOCAL_RANK` instead.

Use: `python -m tests.deepspeed_cpu fit RECIPE key=value ...` runs the real CLI with the shims
applied. Lightning re-launches `python -m tests.deepspeed_cpu ...` for the other ranks, so every
rank gets them. In-process: `apply()`.
"""

from __future__ import annotations

import os
import sys


def apply() -> None:
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    import lightning.fabric.strategies.deepspeed as fabric_ds
    import lightning.pytorch.strategies.deepspeed as pl_ds
    from deepspeed.runtime.engine import DeepSpeedEngine
    from lightning.pytorch.strategies.ddp import DDPStrategy

    if getattr(pl_ds, "_stuffed_mamba_cpu_shim", False):
        return

    def setup_environment(self) -> None:  # 1.
        DDPStrategy.setup_environment(self)

    pl_ds.DeepSpeedStrategy.setup_environment = setup_environment
    pl_ds._validate_device_index_selection = lambda devices: None  # 2.
    fabric_ds._validate_device_index_selection = lambda devices: None

    original = DeepSpeedEngine._set_distributed_vars

    def _set_distributed_vars(self, args):  # 3.
        if args is not None and getattr(args, "device_rank", 0) is None:
            args.device_rank = int(os.environ.get("LOCAL_RANK", 0))
        return original(self, args)

    DeepSpeedEngine._set_distributed_vars = _set_distributed_vars
    pl_ds._stuffed_mamba_cpu_shim = True


def main(argv: list[str] | None = None) -> int:
    apply()
    from stuffed_mamba.cli import main as cli_main

    return cli_main(argv if argv is not None else sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
