"""N_S, the number of floats in a Mamba-2 model's recurrent state (paper appendix A.1).

Per layer the state is the SSM state h [nheads, headdim, d_state] plus the conv state
(the last d_conv-1 inputs of the depthwise conv over xBC, [d_inner + 2*ngroups*d_state, d_conv-1]):

    N_S = n_layer * (nheads*headdim*d_state + (d_inner + 2*ngroups*d_state) * (d_conv-1))

Mamba-2 780M (d_model 1536, 48 layers): 19_353_600, the paper's "19.3M" (section 5.2).

A configuration can be named ("130m", "370m", "780m"), given as a mapping of Mamba2Config
fields, as a Mamba2Config, or as a file: an official mamba_ssm `config.json`, a
HuggingFace transformers Mamba2 `config.json` (or the folder holding either), or a recipe
YAML whose `model:` section holds the fields.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stuffed_mamba.model.config import OFFICIAL_SIZES, Mamba2Config

# The shape fields N_S depends on, with Mamba2Config's defaults (= mamba_ssm's Mamba2 defaults).
SHAPE_DEFAULTS: dict[str, int] = {
    k: getattr(Mamba2Config, k) for k in ("d_state", "d_conv", "expand", "headdim", "ngroups")
}


@dataclass(frozen=True)
class StateSize:
    """The shape of one configuration's recurrent state and its size N_S (floats)."""

    name: str
    d_model: int
    n_layer: int
    d_state: int = 128
    d_conv: int = 4
    expand: int = 2
    headdim: int = 64
    ngroups: int = 1

    @property
    def config(self) -> Mamba2Config:
        """The Mamba2Config of these shape fields: it holds the one N_S formula."""
        return Mamba2Config(
            d_model=self.d_model,
            n_layer=self.n_layer,
            d_state=self.d_state,
            d_conv=self.d_conv,
            expand=self.expand,
            headdim=self.headdim,
            ngroups=self.ngroups,
        )

    @property
    def nheads(self) -> int:  # H
        return self.config.nheads

    @property
    def state_size(self) -> int:
        """N_S in floats (Mamba2Config.state_size)."""
        return self.config.state_size

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "d_model": self.d_model,
            "n_layer": self.n_layer,
            "d_state": self.d_state,
            "d_conv": self.d_conv,
            "expand": self.expand,
            "headdim": self.headdim,
            "ngroups": self.ngroups,
            "nheads": self.nheads,
            "state_size": self.state_size,
        }


def state_size(
    d_model: int,
    n_layer: int,
    d_state: int = 128,
    d_conv: int = 4,
    expand: int = 2,
    headdim: int = 64,
    ngroups: int = 1,
) -> int:
    """N_S in floats for one set of shape fields (see the module docstring)."""
    return StateSize("", d_model, n_layer, d_state, d_conv, expand, headdim, ngroups).state_size


def from_fields(fields: Mapping[str, Any], name: str = "") -> StateSize:
    """A StateSize from Mamba2Config field names (other keys, e.g. `init_from`, are ignored)."""
    missing = [k for k in ("d_model", "n_layer") if fields.get(k) is None]
    if missing:
        raise ValueError(f"model configuration {name or ''} lacks {', '.join(missing)}".replace("  ", " "))
    shape = {k: int(fields.get(k) if fields.get(k) is not None else v) for k, v in SHAPE_DEFAULTS.items()}
    d_model, n_layer = int(fields["d_model"]), int(fields["n_layer"])
    size = StateSize(name, d_model, n_layer, **shape)
    _ = size.config  # Mamba2Config's checks: d_inner a multiple of headdim, nheads of ngroups
    return size


def resolve(spec: Any, *, base_dir: Path | None = None) -> StateSize:
    """A StateSize from a size name, a mapping, a Mamba2Config-like object, or a file path."""
    if isinstance(spec, StateSize):
        return spec
    if isinstance(spec, Mapping):
        return _from_model_section(spec, name="", base_dir=base_dir)
    if not isinstance(spec, (str, Path)):  # Mamba2Config or anything with the fields as attributes
        fields = {k: getattr(spec, k, None) for k in ("d_model", "n_layer", *SHAPE_DEFAULTS)}
        return from_fields(fields, name=type(spec).__name__)
    key = str(spec).lower().removeprefix("state-spaces/").removeprefix("mamba2-").removeprefix("mamba2_")
    if key in OFFICIAL_SIZES:
        return from_fields(OFFICIAL_SIZES[key], name=f"mamba2-{key}")
    path = Path(spec)
    if base_dir is not None and not path.is_absolute() and not path.exists():
        path = base_dir / path
    if path.is_dir():
        path = path / "config.json"
    if not path.exists():
        # a recipe's init_from names a checkpoint folder not downloaded here: an official one
        # is known by its name (checkpoints/mamba2-370m, state-spaces/mamba2-370m)
        official = Path(str(spec).rstrip("/")).name.lower().removeprefix("mamba2-")
        if official in OFFICIAL_SIZES:
            return from_fields(OFFICIAL_SIZES[official], name=f"mamba2-{official}")
        raise ValueError(f"{spec}: not a size name ({', '.join(OFFICIAL_SIZES)}) nor an existing file")
    if path.suffix == ".json":  # an official or transformers config.json, through the one parser
        from stuffed_mamba.model.folder import read_config

        cfg = read_config(path)
        return from_fields({k: getattr(cfg, k) for k in ("d_model", "n_layer", *SHAPE_DEFAULTS)}, name=str(spec))
    if path.suffix in (".yaml", ".yml"):
        from stuffed_mamba.recipe_file import read_recipe

        recipe = read_recipe(path)  # with its `base:` chain
        if not isinstance(recipe, Mapping) or not isinstance(recipe.get("model"), Mapping):
            raise ValueError(f"{path}: a recipe needs a `model:` section")
        return _from_model_section(recipe["model"], name=str(spec), base_dir=path.parent)
    raise ValueError(f"{path}: expected a size name, a .json config, a config folder or a .yaml recipe")


def _from_model_section(model: Mapping[str, Any], name: str, base_dir: Path | None) -> StateSize:
    """A recipe's `model:` section: explicit fields win, else the `init_from` checkpoint's config."""
    if model.get("d_model") is None and model.get("init_from"):
        base = resolve(model["init_from"], base_dir=base_dir).as_dict()
        base.update({k: v for k, v in model.items() if v is not None})
        return from_fields(base, name=name or str(model["init_from"]))
    return from_fields(model, name=name)
