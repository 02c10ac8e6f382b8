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


def resolve_sweep(path: Path, cells: bool = True) -> dict:
    from stuffed_mamba.sweep import expand, load_sweep
    from stuffed_mamba.training.config import load_recipe, to_dict

    recipe, base = load_sweep(path)
    own = _plain(recipe)
    own.pop("base")  # a path as the file wrote it: `base` below is where it leads
    out = {"sweep": own, "base": os.path.relpath(Path(base).resolve(), ROOT), "base_recipe": to_dict(load_recipe(base))}
    if cells:  # a `fit` recipe resolved per cell: about a second each
        out["cells"] = [
            {"name": c.name, "max_steps": c.max_steps, "overrides": list(c.overrides), "run_dir": str(c.run_dir)}
            for c in expand(recipe, base)
        ]
    return out


def resolve(path: str | Path, cells: bool = True) -> dict:
    """One shipped recipe (a path relative to the checkout) resolved, as in the fixture."""
    import huggingface_hub.constants as hub_constants

    cwd, cache = Path.cwd(), hub_constants.HF_HUB_CACHE
    with tempfile.TemporaryDirectory() as empty:
        try:
            os.chdir(ROOT)  # sweep cells' run folders are relative paths
            hub_constants.HF_HUB_CACHE = empty
            p = Path(path)
            return resolve_sweep(p, cells) if p.parent.name == "sweeps" else resolve_fit(p)
        finally:
            hub_constants.HF_HUB_CACHE = cache
            os.chdir(cwd)


def shipped() -> list[str]:
    """Every recipe a user can run (a file whose name starts with `_` is only a base)."""
    found = [*ROOT.glob("recipes/*.yaml"), *ROOT.glob("recipes/sweeps/*.yaml")]
    return sorted(str(p.relative_to(ROOT)) for p in found if not p.name.startswith("_"))


def resolve_all() -> dict[str, dict]:
    """{recipe path relative to the checkout: its resolved configuration}."""
    return {p: resolve(p) for p in shipped()}


if __name__ == "__main__":
    print(json.dumps(resolve_all(), indent=1, sort_keys=True))
