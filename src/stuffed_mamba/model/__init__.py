"""The Mamba-2 language model (knows nothing of Lightning).

`stuffed_mamba.model.config` (Mamba2Config, N_S) imports no torch: the state-size calculator
and recipe tools use it without loading the network's modules, which load on first use here.
"""

from stuffed_mamba.model.config import Mamba2Config

__all__ = ["Mamba2Config", "Mamba2LM", "ModelState", "LayerState", "WindowState", "Intervention", "LMOutput"]

_LAZY = {
    "Intervention": "stuffed_mamba.model.intervention",
    "LMOutput": "stuffed_mamba.model.lm",
    "Mamba2LM": "stuffed_mamba.model.lm",
    "LayerState": "stuffed_mamba.model.state",
    "ModelState": "stuffed_mamba.model.state",
    "WindowState": "stuffed_mamba.model.state",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
