"""Test-only: what dtypes the mixer sees from inside the forward, during training, on every rank.

In-process: `records = []; handles = install(records)` (then `for h in handles: h.remove()`).
Subprocess (every rank of DDP or the real DeepSpeed engine): `STUFFED_MAMBA_TEST_DTYPES=DIR python -m
tests.scripts.dtype_spy fit RECIPE ...` writes `DIR/rank{R}.json`, the record of that rank's first
training forward of a mixer. Lightning re-launches the same module for the other ranks.
"""

from __future__ import annotations

import json
import os
import sys

import torch
from torch.nn.modules.module import register_module_forward_hook, register_module_forward_pre_hook

from stuffed_mamba.model.mixer import Mamba2Mixer


def install(records: list, on_record=None):
    """One record per training forward of a mixer: the dtypes of `A_log`, `dt_bias`, `D` as the
    forward reads them, of in_proj / out_proj (weight, input, output), of the SSM state it returns."""
    current: dict = {}

    def pre(module, args):
        if isinstance(module, Mamba2Mixer) and module.training:
            current.clear()
            current.update({name: str(getattr(module, name).dtype) for name in ("A_log", "dt_bias", "D")})
            current["autocast"] = torch.is_autocast_enabled(args[0].device.type)
            module.in_proj._spy_name, module.out_proj._spy_name = "in_proj", "out_proj"
        name = getattr(module, "_spy_name", None)
        if name and current:
            current[name] = {"weight": str(module.weight.dtype), "input": str(args[0].dtype)}

    def post(module, args, output):
        name = getattr(module, "_spy_name", None)
        if name and current:
            current[name]["output"] = str(output.dtype)
        if isinstance(module, Mamba2Mixer) and module.training and current:
            current["ssm_state"] = str(output[1].ssm.dtype)
            records.append(dict(current))
            if on_record is not None:
                on_record(records[-1])
            current.clear()

    return [register_module_forward_pre_hook(pre), register_module_forward_hook(post)]


def main(argv: list[str] | None = None) -> int:
    from tests import deepspeed_cpu

    deepspeed_cpu.apply()
    out = os.environ["STUFFED_MAMBA_TEST_DTYPES"]

    def write_first(record):
        import torch.distributed as dist

        rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
        path = os.path.join(out, f"rank{rank}.json")
        if not os.path.exists(path):
            with open(path, "w") as f:
                json.dump(record, f)

    install([], on_record=write_first)
    from stuffed_mamba.cli import main as cli_main

    return cli_main(argv if argv is not None else sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
