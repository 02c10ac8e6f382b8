"""Test-only shims that run mamba_ssm's Triton kernels on the CPU, under Triton's interpreter.

mamba_ssm's kernels are plain Triton: with TRITON_INTERPRET=1 they run on CPU tensors, forward and
backward. Four things stand in the way, and the `mamba_kernels` fixture patches each for the tests
that ask for it, then undoes it:

1. `import mamba_ssm` imports the CUDA extension `selective_scan_cuda` (unused by the SSD kernels):
   a stub module stands in for it.
2. The kernel launchers run inside `torch.cuda.device(x.device.index)`: a null context.
3. Some launchers size their grids by `torch.cuda.get_device_properties(...).multi_processor_count`.
4. Triton's autotuner times every config on the GPU (`do_bench`). Here no config is timed: the
   autotuner's pruning keeps one config, by default the one with the smallest blocks (the
   interpreter's cost grows with the block size: 3-4x faster than the first, largest config, with
   the same results), and `do_bench` returns the same time for all, in case it is still reached.
   `autotune_choice("first")` switches to the first config, for tests of that path.

A fifth patch fixes a bug of the interpreter itself: `tl.dot` of bf16 operands (see `_fix_bf16_dot`).

The patches hold for the tests of one module at a time (module-scoped fixture), so the `gpu` tests
of this package see the real Triton and kernels.

TRITON_INTERPRET is read by `triton.jit` when a function is *decorated*: Triton's own library
(`tl.cumsum`, `tl.max`, ...) at `import triton`, mamba_ssm's kernels at their import. Other packages
(DeepSpeed, ...) may have imported Triton earlier in this pytest process, so the fixture sets the
variable, swaps in a fresh import of Triton's Python modules (its compiled `triton._C` extension is
kept) and of mamba_ssm, and afterwards puts the original modules back: the rest of the suite then
sees this machine as it is (no kernels, so `backend="mamba_ssm"` is an ImportError), whatever the
test order.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
import types

import pytest
import torch

BACKEND_MODULE = "stuffed_mamba.ops.mamba_ssm_backend"
RETIRED_PREFIX = "_interpreted_copy_of."


def _is_swapped(name: str) -> bool:
    """Modules imported afresh under the interpreter (Triton's compiled extension is not)."""
    top = name.split(".")[0]
    if top == "triton":
        return not name.startswith("triton._C")
    return top == "mamba_ssm" or name == BACKEND_MODULE


def _pop_swapped_modules() -> dict[str, types.ModuleType]:
    popped = {name: mod for name, mod in sys.modules.items() if _is_swapped(name)}
    for name in popped:
        del sys.modules[name]
    return popped


def _null_device(*args, **kwargs):
    return contextlib.nullcontext()


def _cpu_properties(*args, **kwargs):
    return types.SimpleNamespace(multi_processor_count=2, name="cpu (Triton interpreter)")


def _same_time_for_every_config(kernel_call, quantiles=None):
    return [1.0, 1.0, 1.0]


_CONFIG_CHOICE = ["smallest"]  # which autotune config the interpreted kernels run: "smallest" | "first"


def _block_volume(config) -> int:
    volume = 1
    for key, value in config.kwargs.items():
        if key.startswith("BLOCK_SIZE"):
            volume *= value
    return volume


def _patch_autotuner(Autotuner) -> None:
    prune_configs = Autotuner.prune_configs

    def prune_to_one(self, kwargs):
        configs = prune_configs(self, kwargs)
        if _CONFIG_CHOICE[0] == "first":
            return configs[:1]
        return [min(configs, key=_block_volume)]

    Autotuner.prune_configs = prune_to_one
    Autotuner.do_bench = property(lambda self: _same_time_for_every_config)


def _clear_autotune_caches() -> None:
    Autotuner = sys.modules["triton.runtime.autotuner"].Autotuner
    for name, module in list(sys.modules.items()):
        if name.startswith("mamba_ssm"):
            for value in list(vars(module).values()):
                if isinstance(value, Autotuner):
                    value.cache.clear()


def chosen_configs() -> dict[str, str]:
    """{kernel: the config its autotuner ran last} over mamba_ssm's interpreted kernels."""
    Autotuner = sys.modules["triton.runtime.autotuner"].Autotuner
    return {
        f"{name}.{attr}": str(value.best_config)
        for name, module in list(sys.modules.items())
        if name.startswith("mamba_ssm")
        for attr, value in list(vars(module).items())
        if isinstance(value, Autotuner) and getattr(value, "best_config", None) is not None
    }


@contextlib.contextmanager
def autotune_choice(choice: str):
    """Within (and inside `mamba_kernels`): the interpreted kernels run autotune config `choice`."""
    _CONFIG_CHOICE[0] = choice
    _clear_autotune_caches()
    try:
        yield
    finally:
        _CONFIG_CHOICE[0] = "smallest"
        _clear_autotune_caches()


def _fix_bf16_dot() -> None:
    """Triton 3.9's interpreter keeps bf16 as raw uint16 bits and `tl.dot` multiplies those bits as
    integers (only fp8 operands are converted): garbage for every bf16 matmul. Widen bf16 operands to
    fp32 exactly (bits << 16) first, as tensor cores do: products of bf16 are exact in fp32."""
    import numpy as np
    import triton.language as tl
    from triton.runtime.interpreter import InterpreterBuilder, TensorHandle

    create_dot = InterpreterBuilder.create_dot

    def widen(h):
        if h.dtype == tl.bfloat16:
            return TensorHandle((h.data.astype(np.uint32) << 16).view(np.float32), tl.float32)
        return h

    def create_dot_bf16(self, a, b, d, *args, **kwargs):
        return create_dot(self, widen(a), widen(b), d, *args, **kwargs)

    InterpreterBuilder.create_dot = create_dot_bf16


# The interpreted Triton + mamba_ssm modules, imported once per process and put back in
# sys.modules by each test module that uses them (importing them costs ~5 s of CPU).
_INTERPRETED: dict[str, types.ModuleType] = {}


@contextlib.contextmanager
def interpreted_kernels():
    """Within: the "mamba_ssm" backend module, its Triton kernels running under the interpreter."""
    saved_env = os.environ.get("TRITON_INTERPRET")
    saved_stub = sys.modules.get("selective_scan_cuda")
    saved_device, saved_props = torch.cuda.device, torch.cuda.get_device_properties
    saved_modules = _pop_swapped_modules()
    try:
        os.environ["TRITON_INTERPRET"] = "1"
        sys.modules["selective_scan_cuda"] = types.ModuleType("selective_scan_cuda")
        torch.cuda.device = _null_device
        torch.cuda.get_device_properties = _cpu_properties
        if _INTERPRETED:
            sys.modules.update(_INTERPRETED)
        else:
            # The fresh Triton's autotuner class: patching it leaves the original untouched.
            from triton.runtime.autotuner import Autotuner

            _patch_autotuner(Autotuner)
            _fix_bf16_dot()
        yield importlib.import_module(BACKEND_MODULE)
    finally:
        interpreted = _pop_swapped_modules()
        _INTERPRETED.update(interpreted)
        # They also stay in sys.modules under another name: dropped from it, they are finalised
        # out of order at exit and Triton's nanobind extension prints "leaked" warnings.
        for name, module in interpreted.items():
            sys.modules[f"{RETIRED_PREFIX}{name}"] = module
        sys.modules.update(saved_modules)
        torch.cuda.device, torch.cuda.get_device_properties = saved_device, saved_props
        if saved_stub is None:
            sys.modules.pop("selective_scan_cuda", None)
        else:
            sys.modules["selective_scan_cuda"] = saved_stub
        if saved_env is None:
            os.environ.pop("TRITON_INTERPRET", None)
        else:
            os.environ["TRITON_INTERPRET"] = saved_env


@pytest.fixture(scope="module")
def mamba_kernels():
    """The "mamba_ssm" backend module on CPU, for the tests of one module (then the real world again)."""
    with interpreted_kernels() as backend:
        yield backend
