"""Sweep recipes: a grid of model sizes x training lengths over one base training recipe.

    base: ../tiny_cpu.yaml          # a normal `fit` recipe, relative to this file (or another sweep
                                    # recipe, whose keys this one's are merged over)
    out_dir: runs/sweeps/name       # runs/{cell}/ and results.jsonl go here
    models:                         # name -> `model.*` overrides (N_S follows from them)
      s8k:  {d_model: 32, n_layer: 2, d_state: 16, headdim: 16}
    train_lengths: [64, 128, 256]   # T_train, tokens per segment
    batch_tokens: 4096              # optional: B*S*T per step kept equal (B = batch_tokens / (S*T))
    tokens_per_run: 2000000         # optional: every cell trains on the same number of tokens
                                    # (sets trainer.max_steps = tokens_per_run / tokens per optimiser step)
    overrides: ["data.segments=1"]  # key=value for every cell; {train_length}, {max_steps},
                                    # {warmup_steps} (10% of max_steps), {model}, {cell}, {run_dir}
                                    # are filled in per cell
    extra_overrides: [...]          # appended to `overrides` (later ones win): a sweep recipe built on
                                    # another adds its few overrides instead of restating the list
    eval: {source: ..., position_loss: {...}, passkey: {...}}   # probes run on each cell, see EvalConfig
    reshard: {source: data/sample, out: runs/sample_64, shards: 64}   # optional, see reshard.py

Each cell becomes one `stuffed-mamba fit BASE override...` run with `run.dir` set to
`{out_dir}/runs/{cell}`; cells are numbered models-major (cell i = model i // n_lengths,
length i % n_lengths), which is what a Slurm array's SLURM_ARRAY_TASK_ID indexes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from stuffed_mamba.probes.registry import settings_class

# the sweep's `eval:` section: one entry per registered probe (its config, its defaults) plus
# the evaluation corpus
EvalConfig = settings_class(
    "EvalConfig",
    "Which probes evaluate each cell's last checkpoint, and on which corpus.",
    # None = the cell's data.source; typing.Optional because OmegaConf reads it at run time
    extra=[("source", Optional[str], field(default=None))],  # noqa: UP045
)


@dataclass
class ReshardConfig:
    """Re-split a small local corpus into `shards` shards (see sweep/reshard.py) and train on it."""

    source: str = "data/sample"
    out: str = "???"
    shards: int = 64


@dataclass
class SweepRecipe:
    base: str = "???"
    out_dir: str = "???"
    models: dict[str, dict[str, Any]] = field(default_factory=dict)
    train_lengths: list[int] = field(default_factory=list)
    tokens_per_run: int | None = None
    # optional: tokens per episode row-block, B*S*T, kept equal across lengths by setting
    # data.batch_size = batch_tokens // (S*T) per cell (short lengths get more rows)
    batch_tokens: int | None = None
    overrides: list[str] = field(default_factory=list)
    # a list merged over a base's replaces it: this one is appended, so a child states only its additions
    extra_overrides: list[str] = field(default_factory=list)
    eval: EvalConfig = field(default_factory=EvalConfig)
    fit_timeout_minutes: float | None = None
    reshard: ReshardConfig | None = None  # when set, every cell trains on the re-sharded copy


@dataclass(frozen=True)
class Cell:
    index: int
    name: str
    model: str
    model_fields: dict[str, Any]
    train_length: int
    max_steps: int | None
    overrides: tuple[str, ...]  # everything passed to `fit` after the base recipe
    run_dir: Path


FIT_SECTIONS = ("model", "data", "optim", "trainer", "probes", "run")


def _is_sweep(keys: dict) -> bool:
    """A sweep recipe's `base:` is merged when it is a sweep recipe too, and ends the chain when it is
    the `fit` recipe the cells train (nothing but fit sections)."""
    return not set(keys) <= {*FIT_SECTIONS, "base"}


def load_sweep(path: str | Path, extra: list[str] | tuple[str, ...] = ()) -> tuple[SweepRecipe, Path]:
    """(recipe, base recipe path). Unknown keys and wrong types are one-line ValueErrors.

    `base:` (relative to the file naming it) is either another sweep recipe, whose keys this one's
    are merged over, or the `fit` recipe every cell trains; a chain of sweep recipes ends at one.
    """
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    from stuffed_mamba.recipe_file import RecipeFileError, merged, read_chain

    path = Path(path)
    if not path.exists():
        raise ValueError(f"{path}: no such sweep recipe")
    try:
        layers, base = read_chain(path, follow=_is_sweep)
    except RecipeFileError as e:
        raise ValueError(str(e)) from None
    try:
        cfg = OmegaConf.merge(OmegaConf.structured(SweepRecipe), merged(layers))
        if extra:
            cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(list(extra)))
        if base is not None and "base" not in {e.split("=", 1)[0] for e in extra}:
            cfg.base = str(base)
        recipe: SweepRecipe = OmegaConf.to_object(cfg)
        recipe.overrides = [*recipe.overrides, *recipe.extra_overrides]
    except OmegaConfBaseException as e:
        raise ValueError(f"{path}: {str(e).splitlines()[0]}") from None
    if not recipe.models:
        raise ValueError(f"{path}: `models` is empty")
    if not recipe.train_lengths or any(t < 1 for t in recipe.train_lengths):
        raise ValueError(f"{path}: `train_lengths` must be a non-empty list of positive lengths")
    base = Path(recipe.base)  # from the command line (base=...): relative to the working directory
    if not base.exists():
        raise ValueError(f"{path}: base recipe {recipe.base} not found")
    return recipe, base


def resolved_config(base: Path, overrides: list[str] | tuple[str, ...] = ()):
    """The base recipe with `key=value` overrides as `fit` will see it: a typed RecipeConfig.

    Validated by the training recipe schema, so a cell whose overrides `fit` would refuse
    fails here, before anything runs.
    """
    key = (str(base), tuple(overrides))
    if key not in _RESOLVED:
        from stuffed_mamba.training.config import ConfigError, load_recipe

        try:
            _RESOLVED[key] = load_recipe(base, list(overrides))
        except ConfigError as e:
            raise ValueError(f"{base} {' '.join(overrides)}: {e}") from None
    return _RESOLVED[key]


_RESOLVED: dict[tuple, Any] = {}


def tokens_per_step(base: Path, overrides: list[str] | tuple[str, ...]) -> int:
    """Training tokens per optimiser step: B*T, or B*S*T when one step takes a whole episode."""
    d = resolved_config(base, overrides).data
    per_episode = resolved_config(base, overrides).optim.optimizer_step == "episode"
    return d.batch_size * d.train_length * (d.segments if per_episode else 1)


def expand(recipe: SweepRecipe, base: Path, out_dir: str | Path | None = None) -> list[Cell]:
    """The grid as cells, models-major; every cell's overrides are validated against the recipe schema."""
    out = Path(out_dir or recipe.out_dir)
    cells: list[Cell] = []
    for model, fields in recipe.models.items():
        for t in recipe.train_lengths:
            name = f"{model}_T{t}"
            # the grid's values go in as `fit` overrides (key=value), read back through the typed recipe
            pre = [f"model.{f}={v}" for f, v in fields.items()]
            if recipe.reshard is not None:
                pre.append(f"data.source={recipe.reshard.out}")
            pre.append(f"data.train_length={t}")
            if recipe.batch_tokens:
                shared = pre + [o for o in recipe.overrides if "{" not in o]
                segments = resolved_config(base, shared).data.segments
                pre.append(f"data.batch_size={max(1, recipe.batch_tokens // (segments * t))}")
            max_steps = None
            if recipe.tokens_per_run:
                shared = pre + [o for o in recipe.overrides if "{" not in o]
                max_steps = max(1, math.ceil(recipe.tokens_per_run / tokens_per_step(base, shared)))
                pre.append(f"trainer.max_steps={max_steps}")
            run_dir = out / "runs" / name
            fmt = {
                "train_length": t,
                "max_steps": max_steps,
                "model": model,
                "cell": name,
                "run_dir": run_dir,
                "warmup_steps": None if max_steps is None else max(1, math.ceil(0.1 * max_steps)),
            }
            try:
                post = [o.format(**fmt) for o in recipe.overrides]
            except (KeyError, IndexError) as e:
                raise ValueError(f"override placeholder {e} unknown (known: {', '.join(fmt)})") from None
            post.append(f"run.dir={run_dir}")
            overrides = tuple(pre + post)
            resolved_config(base, overrides)  # refuse a bad cell now, not an hour into the sweep
            cells.append(Cell(len(cells), name, model, dict(fields), t, max_steps, overrides, run_dir))
    return cells
