"""Every shipped recipe resolved to plain dicts: the fixture `resolved_before.json` (issue 20, acceptance 2).

    python -m tests.recipes.resolve_recipes > tests/recipes/resolved_before.json

written from main before recipes became bases plus deltas; `test_resolved_recipes.py` resolves them again
with the same function and compares. Per fit recipe: `recipe`, the validated recipe (`load_recipe`), and
`printed`, what `stuffed-mamba fit RECIPE --print-config` prints, read with an empty HuggingFace cache so
that it does not depend on what this machine downloaded. Per sweep recipe: the sweep's own keys, its base
recipe, that base's validated recipe and every cell's `fit` overrides.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _plain(x):
    from omegaconf import OmegaConf

    return OmegaConf.to_container(OmegaConf.structured(x)) if not isinstance(x, dict) else x


def resolve_fit(path: Path) -> dict:
    from omegaconf import OmegaConf

    from stuffed_mamba.cli.fit import _vocab_size_offline
    from stuffed_mamba.training.config import load_recipe, resolved, to_dict, to_yaml

    cfg = load_recipe(path)
    printed = to_yaml(resolved(cfg, _vocab_size_offline(cfg.data.tokenizer)))
    return {"recipe": to_dict(cfg), "printed": OmegaConf.to_container(OmegaConf.create(printed))}


def resolve_sweep(path: Path) -> dict:
    from stuffed_mamba.sweep import expand, load_sweep
    from stuffed_mamba.training.config import load_recipe, to_dict

    recipe, base = load_sweep(path)
    own = _plain(recipe)
    own.pop("base")  # a path as the file wrote it: `base` below is where it leads
    cells = [
        {"name": c.name, "max_steps": c.max_steps, "overrides": list(c.overrides), "run_dir": str(c.run_dir)}
        for c in expand(recipe, base)
    ]
    return {
        "sweep": own,
        "base": os.path.relpath(Path(base).resolve(), ROOT),
        "base_recipe": to_dict(load_recipe(base)),
        "cells": cells,
    }


def resolve_all() -> dict[str, dict]:
    """{recipe path relative to the checkout: its resolved configuration}, from the checkout's root."""
    import huggingface_hub.constants as hub_constants

    out: dict[str, dict] = {}
    cwd, cache = Path.cwd(), hub_constants.HF_HUB_CACHE
    with tempfile.TemporaryDirectory() as empty:
        try:
            os.chdir(ROOT)  # sweep cells' run folders are relative paths
            hub_constants.HF_HUB_CACHE = empty
            for p in sorted(Path("recipes").glob("*.yaml")):
                out[str(p)] = resolve_fit(p)
            for p in sorted(Path("recipes/sweeps").glob("*.yaml")):
                out[str(p)] = resolve_sweep(p)
        finally:
            hub_constants.HF_HUB_CACHE = cache
            os.chdir(cwd)
    return out


if __name__ == "__main__":
    print(json.dumps(resolve_all(), indent=1, sort_keys=True))
