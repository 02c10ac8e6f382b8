"""What the doctor's checks share: their outcome types, the context they fill in, the tiny model."""

from __future__ import annotations

import copy
import os
import threading
from dataclasses import dataclass

# the architecture of the kernels and fit checks' tiny model
TINY_MODEL = dict(d_model=32, n_layer=2, d_state=16, headdim=16, chunk_size=16, expand=2, d_conv=4, ngroups=1)


class Fail(Exception):
    """A check that found a problem; the message is the reason (one line)."""


class Skip(Exception):
    """A check that cannot run here, or whose input failed an earlier check; the message says why."""


class Warn(Exception):
    """A check that ran, but not as the recipe asks (another strategy, backend or accelerator): the
    message says what was substituted. The checks that need it still run; the exit code stays 0."""


@dataclass
class Result:
    name: str
    status: str  # "ok" | "WARN" | "FAIL" | "skip"
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
        self._hub_problem: str | None = None  # why the hub is unreachable ("" once it answered)

    @property
    def cuda(self) -> int:
        import torch

        return torch.cuda.device_count() if torch.cuda.is_available() else 0

    def hub_problem(self) -> str | None:
        """None when the HuggingFace hub answers (or HF_HUB_OFFLINE was set by the user: the cache
        only, as asked); else why not. The hub is asked once, with a short timeout; when it does not
        answer, HF_HUB_OFFLINE=1 is set for the rest of this process (and the fit check's children),
        so the cache is read without huggingface_hub's retries."""
        if self._hub_problem is None:
            from huggingface_hub import constants

            self._hub_problem = "" if constants.HF_HUB_OFFLINE else (_ask_hub(constants.ENDPOINT) or "")
            if self._hub_problem:
                os.environ["HF_HUB_OFFLINE"] = "1"
                constants.HF_HUB_OFFLINE = True
        return self._hub_problem or None

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


HUB_TIMEOUT_S = 3.0


def _ask_hub(endpoint: str, timeout: float = HUB_TIMEOUT_S) -> str | None:
    """None when `endpoint` answers one HEAD request (any HTTP status) within `timeout` seconds, else
    why not. In a thread: name resolution has no timeout of its own."""
    from huggingface_hub.utils import get_session

    from stuffed_mamba.errors import first_line

    outcome: list[str | None] = []

    def ask() -> None:
        try:
            get_session().head(endpoint, timeout=timeout)
            outcome.append(None)
        except Exception as e:  # noqa: BLE001 - DNS, refused, TLS, timeout: all mean "not reachable"
            outcome.append(f"{type(e).__name__}: {first_line(e)}")

    thread = threading.Thread(target=ask, daemon=True)
    thread.start()
    thread.join(timeout + 0.5)
    if not outcome:
        return f"{endpoint} did not answer in {timeout:.0f} s"
    return None if outcome[0] is None else f"{endpoint}: {outcome[0]}"
