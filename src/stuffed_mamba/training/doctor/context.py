"""What the doctor's checks share: their outcome types, the context they fill in, the tiny model."""

from __future__ import annotations

import copy
from dataclasses import dataclass

# the architecture of the kernels and fit checks' tiny model
TINY_MODEL = dict(d_model=32, n_layer=2, d_state=16, headdim=16, chunk_size=16, expand=2, d_conv=4, ngroups=1)


class Fail(Exception):
    """A check that found a problem; the message is the reason (one line)."""


class Skip(Exception):
    """A check that cannot run here, or whose input failed an earlier check; the message says why."""


@dataclass
class Result:
    name: str
    status: str  # "ok" | "FAIL" | "skip"
    seconds: float
    detail: str


class Context:
    """What the checks learn and share: the recipe, the tokenizer, which checks passed."""

    def __init__(self, recipe: str, overrides: list[str]):
        self.recipe = recipe
        self.overrides = list(overrides)
        self.cfg = None
        self.tokenizer = None
        self.model_config = None  # the architecture, once known (init_from's, or the recipe's)
        self.passed: set[str] = set()

    @property
    def cuda(self) -> int:
        import torch

        return torch.cuda.device_count() if torch.cuda.is_available() else 0

    def need(self, *names: str) -> None:
        for name in names:
            if name not in self.passed:
                raise Skip(f"needs the {name} check to pass")


def device_count(devices, default: int) -> int:
    """`trainer.devices` as a number (`default` for "auto" and -1)."""
    try:
        n = int(devices)
    except (TypeError, ValueError):
        return default  # "auto"
    return n if n > 0 else default


def replaced(cfg, **sections):
    """A copy of the recipe `cfg` with `section={key: value}` changed."""
    cfg = copy.deepcopy(cfg)
    for section, values in sections.items():
        for k, v in values.items():
            setattr(getattr(cfg, section), k, v)
    return cfg
