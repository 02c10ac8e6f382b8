"""Issue 20, acceptance 2: every shipped recipe resolves to what it resolved to before recipes became
bases plus deltas (resolved_before.json, written from main by resolve_recipes.py before the change).

A difference fails the test unless ALLOWED lists it with its reason."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.recipes.resolve_recipes import resolve, shipped

BEFORE = json.loads((Path(__file__).parent / "resolved_before.json").read_text())

# (regex over the flattened key, what the key held before) -> why it may differ. The `base:` key itself
# never reaches a resolved configuration (the loader consumes it), so it needs no entry.
ALLOWED = {
    # the probes' group defaults are new keys of the `probes:` section (issue 20: "a group default for
    # the probes' schedule and prefill chunk"); null where a recipe does not write them, its value where
    # it does (each probe's own value, compared below, is unchanged)
    (r"^(recipe|printed|base_recipe)\.probes\.(every_n_steps|prefill_chunk)$", "absent"): "new group key",
    # issue 23: the probe effrem (off by default) is a new section; a recipe's group defaults
    # (probes.every_n_steps, probes.prefill_chunk) reach it as they reach every probe
    (r"^(recipe|printed|base_recipe)\.probes\.effrem\.", "absent"): "new probe section",
}


def flat(d, prefix: str = "") -> dict:
    """Nested dicts and lists as {dotted key: leaf}; a list's items are keyed by their index."""
    if isinstance(d, dict):
        return {k: v for key, sub in d.items() for k, v in flat(sub, f"{prefix}{key}.").items()} or {prefix[:-1]: {}}
    if isinstance(d, list):
        return {k: v for i, sub in enumerate(d) for k, v in flat(sub, f"{prefix}{i}.").items()} or {prefix[:-1]: []}
    return {prefix[:-1]: d}


_ABSENT = object()


def _show(v) -> str:
    return "(absent)" if v is _ABSENT else repr(v)


def schema_defaults() -> dict:
    """{flattened key: the schema's default} of a fit recipe and of a sweep recipe's own keys."""
    from omegaconf import OmegaConf

    from stuffed_mamba.sweep.recipe import SweepRecipe
    from stuffed_mamba.training.config import RecipeConfig, to_dict

    fit = to_dict(RecipeConfig())
    sweep = OmegaConf.to_container(OmegaConf.structured(SweepRecipe))
    return flat({"recipe": fit, "printed": fit, "base_recipe": fit, "sweep": sweep})


def differences(before: dict, now: dict) -> list[str]:
    """`key: before -> now` for every difference ALLOWED does not list.

    A key absent before and holding its schema default now is a setting some later change added to the
    schema (every recipe gets its default), not a change of a recipe: it passes without an entry."""
    a, b, defaults = flat(before), flat(now), schema_defaults()
    out = []
    for key in sorted(set(a) | set(b)):
        old, new = a.get(key, _ABSENT), b.get(key, _ABSENT)
        if old == new and type(old) is type(new):
            continue
        if old is _ABSENT and key in defaults and defaults[key] == new:
            continue
        was = "absent" if old is _ABSENT else "present"
        if any(re.search(pattern, key) and was == held for pattern, held in ALLOWED):
            continue
        out.append(f"{key}: {_show(old)} -> {_show(new)}")
    return out


# recipes added after the fixture (nothing to compare them with) -> their issue
ADDED_AFTER = {
    "recipes/mamba2_130m_state_passing.yaml": "issue 23",
    "recipes/mamba2_2.7b_256k.yaml": "issue 21: 256K segments by context parallelism",
    "recipes/sweeps/initial_state_cpu.yaml": "issue 23: the miniature's initial-state runs",
}


def test_the_fixture_covers_every_shipped_recipe():
    """A recipe added after the fixture has nothing to be compared with: it is listed here on purpose."""
    assert set(shipped()) == set(BEFORE) | set(ADDED_AFTER)


@pytest.mark.parametrize("recipe", [r for r in shipped() if "/sweeps/" not in r and r not in ADDED_AFTER])
def test_fit_recipe_resolves_as_before(recipe):
    assert differences(BEFORE[recipe], resolve(recipe)) == []


@pytest.mark.parametrize("recipe", [r for r in shipped() if "/sweeps/" in r and r not in ADDED_AFTER])
def test_sweep_recipe_resolves_as_before(recipe):
    """The sweep's keys, its `fit` base and that base's recipe (the cells are the slow test below)."""
    before = {k: v for k, v in BEFORE[recipe].items() if k != "cells"}
    assert differences(before, resolve(recipe, cells=False)) == []


@pytest.mark.slow
@pytest.mark.parametrize("recipe", [r for r in shipped() if "/sweeps/" in r and r not in ADDED_AFTER])
def test_sweep_cells_as_before(recipe):
    """Every cell's `fit` overrides, steps and run folder (one resolved `fit` recipe per cell: ~1 s each)."""
    assert differences(BEFORE[recipe], resolve(recipe)) == []


def test_a_difference_is_caught():
    """The comparison itself: a changed value, a removed key and an unlisted new key each fail;
    a listed new key passes."""
    before = {"recipe": {"optim": {"lr": 1e-4}, "probes": {"passkey": {"lengths": [1, 2]}}}}
    assert differences(before, before) == []
    changed = {"recipe": {"optim": {"lr": 2e-4}, "probes": {"passkey": {"lengths": [1, 2, 3]}}}}
    assert differences(before, changed) == [
        "recipe.optim.lr: 0.0001 -> 0.0002",
        "recipe.probes.passkey.lengths.2: (absent) -> 3",
    ]
    assert differences(before, {"recipe": {"probes": before["recipe"]["probes"]}}) == [
        "recipe.optim.lr: 0.0001 -> (absent)"
    ]
    grouped = {"recipe": {**before["recipe"], "probes": {**before["recipe"]["probes"], "every_n_steps": 60}}}
    assert differences(before, grouped) == []
    assert differences(before, {"recipe": {**before["recipe"], "base": "x.yaml"}}) == [
        "recipe.base: (absent) -> 'x.yaml'"
    ]
