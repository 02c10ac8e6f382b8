"""The probe contract and its one registry: every forgetting probe describes itself once.

A probe module (`probes/<name>.py`) holds a `PROBE`, an instance of a `Probe` subclass that says

- `Config`: a dataclass of the probe's settings, each with its default and help text
  (`knob(...)`); it is the recipe's `probes.<name>:` section, the flags of
  `stuffed-mamba eval <command>` and the sweep's `eval.<name>:` section;
- `inputs(cfg, ctx)`: what the probe reads besides the model (prompt ids, evaluation text),
  built once per caller from the `Context` (tokenizer, T_train, evaluation text);
- `run(model, inputs, cfg, deadline) -> result`: the measurement (pure, no Lightning);
- `summary(result, cfg, ctx) -> dict`: JSON-able; `scalars(summary) -> {tag: float}`
  (TensorBoard `probes/<name>/<tag>` and the sweep's `<name>/<tag>` columns);
  `figures(result, cfg, ctx) -> {name: Figure}`; `table(result, summary, cfg) -> str`;
  `layout`: the probe's charts of the "forgetting" custom-scalars dashboard.

Adding a probe is one new file in `probes/` plus its line in `PROBE_MODULES`: training (a
callback, TensorBoard scalars and images, the dashboard), `stuffed-mamba eval` and sweeps
loop over this registry.
"""

from __future__ import annotations

import dataclasses
import importlib
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

# the registry: recipe key -> module of stuffed_mamba.probes holding its PROBE
PROBE_MODULES: dict[str, str] = {
    "passkey": "passkey",
    "retention": "retention",
    "states": "states",
    "position_loss": "position_loss",
    "memory_lengths": "memory_lengths",
    "effrem": "effrem",
}

# appendix F: evaluation text is documents of at least 16K tokens (concatenated when shorter
# than the context asked for)
MIN_DOC_TOKENS = 16384


def knob(
    default: Any,
    help: str,
    *,
    flag: str | None = None,
    tokens: bool = False,
    choices: list | None = None,
    train_only: bool = False,
):
    """A probe setting: its default and help, once. flag: the eval CLI's name when it is not
    `--field-name`; tokens: a length (accepts 4K, 1M); train_only: not an eval CLI flag."""
    meta = {"help": help, "flag": flag, "tokens": tokens, "choices": choices, "train_only": train_only}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class ProbeSettings:
    """What every probe's config has: the training schedule (eval and sweeps ignore it)."""

    enabled: bool = knob(True, "run this probe", train_only=True)
    every_n_steps: int = knob(500, "optimiser steps between two runs during training", train_only=True)
    time_budget_s: float = knob(600.0, "stop starting new samples past this many seconds (training)", train_only=True)


@dataclass
class Context:
    """What a probe may read besides the model and its config; each caller fills what it knows.

    eval_text(length, n, min_doc_tokens) -> LongTensor [n, length]: evaluation documents
    (appendix F), None when no corpus is known.
    """

    tokenizer: Any = None
    train_length: int | None = None  # T_train
    eval_text: Callable[[int, int, int], Any] | None = None

    def need_train_length(self, probe: str) -> int:
        if not self.train_length:
            raise ValueError(f"{probe}: T_train unknown (no recipe beside the checkpoint): pass --train-length")
        return int(self.train_length)

    def need_tokenizer(self, probe: str):
        if self.tokenizer is None:
            raise ValueError(f"{probe}: needs a tokenizer")
        return self.tokenizer

    def text(self, probe: str, length: int, n: int, min_doc_tokens: int):
        if self.eval_text is None:
            raise ValueError(f"{probe}: no evaluation text: pass --data SOURCE (a RedPajama-V2 mirror folder or URL)")
        return self.eval_text(int(length), int(n), int(min_doc_tokens))


class Probe:
    """One probe's self-description (see the module docstring). Subclass once per probe module."""

    name: str = ""  # recipe key, TensorBoard prefix, JSON name
    command: str = ""  # `stuffed-mamba eval <command>` (default: name with dashes)
    Config: type = ProbeSettings
    needs_text = False  # reads evaluation documents: eval gets --data/--listing
    layout: dict[str, list] = {}

    @property
    def help(self) -> str:
        return (self.Config.__doc__ or self.name).strip().splitlines()[0]

    def check(self, cfg, ctx: Context) -> None:
        """Fail now, with a one-line ValueError, on settings that would fail at the first run."""

    def inputs(self, cfg, ctx: Context) -> Any:
        return None

    def run(self, model, inputs: Any, cfg, deadline: float | None = None) -> Any:
        raise NotImplementedError

    def summary(self, result: Any, cfg, ctx: Context) -> dict:
        raise NotImplementedError

    def scalars(self, summary: dict) -> dict[str, float]:
        return {}

    def figures(self, result: Any, cfg, ctx: Context, note: str = "") -> dict:
        """{name: matplotlib Figure}: TensorBoard `probes/<probe>/<name>`, eval `<command>_<name>.png`."""
        return {}

    def table(self, result: Any, summary: dict, cfg, note: str = "") -> str:
        """Plain text for `stuffed-mamba eval` (`note`: e.g. the intervention)."""
        return heading(self.name, note)


def heading(text: str, note: str = "") -> str:
    return f"{text}, {note}" if note else text


def get(name: str) -> Probe:
    """The registered probe `name` (ValueError naming the known ones otherwise)."""
    if name not in PROBE_MODULES:
        raise ValueError(f"unknown probe {name!r} (known: {', '.join(PROBE_MODULES)})")
    probe = importlib.import_module(f"stuffed_mamba.probes.{PROBE_MODULES[name]}").PROBE
    if not probe.command:
        probe.command = name.replace("_", "-")
    return probe


def all_probes() -> list[Probe]:
    return [get(name) for name in PROBE_MODULES]


def settings_class(class_name: str, doc: str, extra: list[tuple] = ()) -> type:
    """A dataclass with `enabled`, one field per registered probe (its Config) and `extra` fields."""
    fields = [("enabled", bool, knob(True, "false turns every probe off"))]
    fields += [(p.name, p.Config, field(default_factory=p.Config)) for p in all_probes()]
    cls = dataclasses.make_dataclass(class_name, fields + list(extra))
    cls.__module__ = __name__
    cls.__doc__ = doc
    return cls


_CLASSES: dict[str, type] = {}

# The recipe's group defaults: `probes.every_n_steps: 1000` is the period of every probe that does
# not set its own in the same recipe file (or the same override list), `probes.prefill_chunk` likewise.
GROUP_KEYS = {
    "every_n_steps": "every probe's every_n_steps unless the probe sets its own (null: each probe's)",
    "prefill_chunk": "every probe's prefill_chunk unless the probe sets its own (null: each probe's)",
}


def __getattr__(name: str):
    # built on first use: the probe modules import this one, so it cannot import them at load time
    if name == "ProbesConfig":
        if name not in _CLASSES:
            _CLASSES[name] = settings_class(
                name,
                "The recipe's `probes:` section: one entry per registered probe; `enabled: false` turns all off; "
                "`every_n_steps` and `prefill_chunk` here are group defaults.",
                # typing.Optional: OmegaConf reads these types at run time
                extra=[(k, typing.Optional[int], knob(None, h)) for k, h in GROUP_KEYS.items()],  # noqa: UP045
            )
        return _CLASSES[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def inherit_group_defaults(section: Any) -> Any:
    """One layer of a recipe's `probes:` section (a plain dict) with each group key it sets copied into
    every probe that has that setting and does not set it in this same layer. Per layer, so that a
    recipe's `probes.every_n_steps` replaces the periods its base gave each probe."""
    if not isinstance(section, dict):
        return section
    out = dict(section)
    for key in GROUP_KEYS:
        if out.get(key) is None:
            continue
        for probe in all_probes():
            mine = out.get(probe.name)
            if mine is None:
                mine = {}
            if isinstance(mine, dict) and key in {f.name for f in dataclasses.fields(probe.Config)}:
                out[probe.name] = {key: out[key], **mine}
    return out


def as_config(probe: Probe, cfg: Any = None, **overrides):
    """probe.Config from None, a Config, a DictConfig or a dict, with `overrides` (unknown keys are errors)."""
    from omegaconf import OmegaConf

    if isinstance(cfg, probe.Config) and not overrides:
        return cfg
    base = OmegaConf.structured(cfg if isinstance(cfg, probe.Config) else probe.Config)
    merged = OmegaConf.merge(base, cfg if cfg is not None and not isinstance(cfg, probe.Config) else {}, overrides)
    return OmegaConf.to_object(merged)


def as_probes_config(cfg: Any, cls: type | None = None):
    """A ProbesConfig (or `cls`) from itself, a DictConfig or a plain dict (unknown keys are errors)."""
    cls = cls or __getattr__("ProbesConfig")
    if isinstance(cfg, cls):
        return cfg
    from omegaconf import DictConfig, OmegaConf

    if isinstance(cfg, DictConfig):
        cfg = OmegaConf.to_container(cfg)
    # a dict is one layer, as a recipe file is: its group keys reach the probes it leaves unset
    cfg = inherit_group_defaults(cfg) if isinstance(cfg, dict) else cfg
    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(cls), cfg if cfg is not None else {}))


def cli_fields(probe: Probe) -> list[tuple[dataclasses.Field, type]]:
    """(field, resolved type) of the settings `stuffed-mamba eval` exposes as flags."""
    hints = typing.get_type_hints(probe.Config)
    return [(f, hints[f.name]) for f in dataclasses.fields(probe.Config) if not f.metadata.get("train_only")]
