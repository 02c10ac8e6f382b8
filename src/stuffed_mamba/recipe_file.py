"""Reading recipe files and their `base:` chains (DESIGN section 10). OmegaConf only: every layer imports it.

A recipe (a `fit` recipe or a sweep recipe) may name `base: OTHER.yaml`, relative to its own file
(or absolute); the base may name its own. The recipe is its base's configuration with its own keys
merged over it: mappings merge key by key, a value or a list replaces the base's. A loop of bases is
a one-line error. `training.config.load_recipe`, the sweep loader and `analyze state-size` read
recipe files through `read_chain`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any


class RecipeFileError(ValueError):
    """A recipe file that cannot be read (syntax, a missing or looping base); one line naming the file."""


def read_layer(path: Path) -> dict:
    """One YAML file as a plain dict (an empty file is {})."""
    from omegaconf import DictConfig, OmegaConf

    try:
        node = OmegaConf.load(path)
    except Exception as e:  # YAML syntax
        first = (getattr(e, "msg", None) or str(e)).strip().splitlines()[0]
        raise RecipeFileError(f"{path}: cannot parse YAML: {first}") from None
    if not isinstance(node, DictConfig):
        raise RecipeFileError(f"{path}: a recipe is a mapping of sections, got a list")
    return OmegaConf.to_container(node)


def read_chain(
    path: str | Path, follow: Callable[[dict], bool] | None = None, _seen: tuple[Path, ...] = ()
) -> tuple[list[tuple[Path, dict]], Path | None]:
    """([(file, its keys without `base`)], base first; the base `follow` declined, else None).

    `follow(base's keys)` says whether a base is merged (default: always); a sweep recipe follows only
    bases that are sweep recipes, the `fit` recipe at the end of its chain being what its cells train.
    """
    path = Path(path)
    if path.resolve() in _seen:
        loop = " -> ".join(p.name for p in (*_seen, path.resolve()))
        raise RecipeFileError(f"{path}: its base chain loops ({loop}); one of these files must not name a base")
    layer = read_layer(path)
    base = layer.pop("base", None)
    if base is None:
        return [(path, layer)], None
    if not isinstance(base, str) or not base:
        raise RecipeFileError(f"{path}: base must be the path of another recipe, got {base!r}")
    base_path = Path(base) if Path(base).is_absolute() else path.parent / base
    if not base_path.is_file():
        raise RecipeFileError(f"{path}: base {base} not found (relative to the file naming it: {base_path})")
    if follow is not None and not follow(read_layer(base_path)):
        return [(path, layer)], base_path
    chain, end = read_chain(base_path, follow, (*_seen, path.resolve()))
    return [*chain, (path, layer)], end


def merged(layers: list[tuple[Any, dict]]) -> dict:
    """The layers' keys merged in order (later over earlier), without a schema."""
    from omegaconf import OmegaConf

    return OmegaConf.to_container(OmegaConf.merge({}, *(layer for _, layer in layers)))


def read_recipe(path: str | Path) -> dict:
    """A recipe file with its base chain merged in (no schema, no validation): what `fit` reads."""
    return merged(read_chain(path)[0])
