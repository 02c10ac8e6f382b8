"""Sweep recipes: a grid of model sizes x training lengths over one base training recipe.

    base: ../tiny_cpu.yaml          # a normal `fit` recipe, relative to this file
    out_dir: runs/sweeps/name       # runs/{cell}/ and results.jsonl go here
    models:                         # name -> `model.*` overrides (N_S follows from them)
      s8k:  {d_model: 32, n_layer: 2, d_state: 16, headdim: 16}
    train_lengths: [64, 128, 256]   # T_train, tokens per segment
    tokens_per_run: 2000000         # optional: every cell trains on the same number of tokens
    overrides: ["data.segments=1"]  # key=value for every cell; {train_length}, {max_steps},
                                    # {model}, {cell} are filled in per cell
    eval: {...}                     # see EvalConfig

Each cell becomes one `stuffed-mamba fit BASE override...` run with `run.dir` set to
`{out_dir}/runs/{cell}`; cells are numbered models-major (cell i = model i // n_lengths,
length i % n_lengths), which is what a Slurm array's SLURM_ARRAY_TASK_ID indexes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional


@dataclass
class Keys:
    """Where the grid's values go in the base recipe (dotted paths)."""

    train_length: str = "data.train_length"
    segments: str = "data.segments"
    batch_size: str = "data.batch_size"
    max_steps: str = "trainer.max_steps"
    run_dir: str = "run.dir"
    model: str = "model"  # prefix of the model-size overrides


@dataclass
class PositionLossEval:
    """Loss per position on evaluation text, judged by `learned_to_forget` (section 4.2)."""

    length: int = 8192  # tokens per evaluation sequence (the paper: 1M) ...
    min_multiple: float = 4.0  # ... and never fewer than min_multiple x T_train
    sequences: int = 4  # sequences averaged (the paper: 128)
    chunk_size: int = 2048  # prefill chunk (state carried between chunks)


@dataclass
class PasskeyEval:
    enabled: bool = True
    lengths: list[int] = field(default_factory=list)  # context lengths; empty = multiples of T_train
    multiples: list[float] = field(default_factory=lambda: [0.5, 1.0, 2.0, 4.0])
    samples: int = 5  # needle depths per length


@dataclass
class EvalConfig:
    position_loss: PositionLossEval = field(default_factory=PositionLossEval)
    passkey: PasskeyEval = field(default_factory=PasskeyEval)
    seed: int = 0


@dataclass
class SweepRecipe:
    base: str = "???"
    out_dir: str = "???"
    models: dict[str, dict[str, Any]] = field(default_factory=dict)
    train_lengths: list[int] = field(default_factory=list)
    tokens_per_run: Optional[int] = None
    overrides: list[str] = field(default_factory=list)
    keys: Keys = field(default_factory=Keys)
    eval: EvalConfig = field(default_factory=EvalConfig)
    fit_timeout_minutes: Optional[float] = None


@dataclass(frozen=True)
class Cell:
    index: int
    name: str
    model: str
    model_fields: dict[str, Any]
    train_length: int
    max_steps: Optional[int]
    overrides: tuple[str, ...]  # everything passed to `fit` after the base recipe
    run_dir: Path


def load_sweep(path: str | Path, extra: list[str] | tuple[str, ...] = ()) -> tuple[SweepRecipe, Path]:
    """(recipe, base recipe path). Unknown keys and wrong types are one-line ValueErrors."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    path = Path(path)
    if not path.exists():
        raise ValueError(f"{path}: no such sweep recipe")
    try:
        cfg = OmegaConf.merge(OmegaConf.structured(SweepRecipe), OmegaConf.load(path))
        if extra:
            cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(list(extra)))
        recipe: SweepRecipe = OmegaConf.to_object(cfg)
    except OmegaConfBaseException as e:
        raise ValueError(f"{path}: {str(e).splitlines()[0]}") from None
    if not recipe.models:
        raise ValueError(f"{path}: `models` is empty")
    if not recipe.train_lengths or any(t < 1 for t in recipe.train_lengths):
        raise ValueError(f"{path}: `train_lengths` must be a non-empty list of positive lengths")
    base = Path(recipe.base)
    if not base.is_absolute():
        # relative to the sweep recipe first, then to the working directory
        base = (path.parent / base) if (path.parent / base).exists() else base
    if not base.exists():
        raise ValueError(f"{path}: base recipe {recipe.base} not found")
    return recipe, base


def base_value(base: Path, dotted: str, overrides: list[str] | tuple[str, ...] = ()) -> Any:
    """A value of the base recipe after `key=value` overrides (None when absent)."""
    from omegaconf import OmegaConf

    for o in reversed(overrides):  # the last override of a key wins, as in `fit`
        if o.partition("=")[0] == dotted:
            return OmegaConf.select(OmegaConf.from_dotlist([o]), dotted, default=None)
    return OmegaConf.select(OmegaConf.load(base), dotted, default=None)


def expand(recipe: SweepRecipe, base: Path, out_dir: str | Path | None = None) -> list[Cell]:
    """The grid as cells, models-major."""
    out = Path(out_dir or recipe.out_dir)
    k = recipe.keys
    cells: list[Cell] = []
    for model, fields in recipe.models.items():
        for t in recipe.train_lengths:
            name = f"{model}_T{t}"
            pre = [f"{k.model}.{f}={v}" for f, v in fields.items()]
            pre.append(f"{k.train_length}={t}")
            max_steps = None
            if recipe.tokens_per_run:
                shared = [o for o in recipe.overrides if "{" not in o]
                segments = int(base_value(base, k.segments, shared) or 1)
                batch = int(base_value(base, k.batch_size, shared) or 1)
                max_steps = max(1, math.ceil(recipe.tokens_per_run / (batch * segments * t)))
                pre.append(f"{k.max_steps}={max_steps}")
            run_dir = out / "runs" / name
            fmt = {"train_length": t, "max_steps": max_steps, "model": model, "cell": name, "run_dir": run_dir}
            post = [o.format(**fmt) for o in recipe.overrides]
            post.append(f"{k.run_dir}={run_dir}")
            cells.append(Cell(len(cells), name, model, dict(fields), t, max_steps, tuple(pre + post), run_dir))
    return cells
