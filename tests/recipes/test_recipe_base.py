"""`base: OTHER.yaml` (DESIGN section 10) and the probes' group defaults: a recipe is its base's
configuration with its own keys merged over it, for `fit` and sweep recipes alike."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from stuffed_mamba.recipe_file import read_chain
from stuffed_mamba.training.config import ConfigError, load_recipe, to_dict

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "recipes/tiny_cpu.yaml"


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_a_chain_of_bases_merges_in_order_relative_to_each_file(tmp_path, monkeypatch):
    """grand (a copy of tiny_cpu) <- parent (in another folder) <- child: each names its base relative
    to itself; each key comes from the nearest file that sets it; the working directory plays no part."""
    write(tmp_path / "a/grand.yaml", TINY.read_text())
    write(tmp_path / "a/b/parent.yaml", "base: ../grand.yaml\noptim: {lr: 1.0e-3, total_steps: 300}\n")
    child = write(tmp_path / "c/child.yaml", "base: ../a/b/parent.yaml\noptim: {lr: 2.0e-3}\nrun: {dir: runs/x}\n")
    monkeypatch.chdir(tmp_path / "a/b")  # where "../grand.yaml" would mean something else
    cfg = load_recipe(child)
    tiny = load_recipe(TINY)
    assert (cfg.optim.lr, cfg.optim.total_steps, cfg.run.dir) == (2.0e-3, 300, "runs/x")
    assert (cfg.optim.warmup_steps, cfg.model.d_model, cfg.data.batch_size) == (
        tiny.optim.warmup_steps,
        tiny.model.d_model,
        tiny.data.batch_size,
    )
    assert [p.name for p, _ in read_chain(child)[0]] == ["grand.yaml", "parent.yaml", "child.yaml"]
    # everything else is tiny_cpu's, list values included
    a, b = to_dict(cfg), to_dict(tiny)
    for section in ("optim", "run"):
        a.pop(section), b.pop(section)
    assert a == b


def test_overrides_go_over_the_whole_chain(tmp_path):
    child = write(tmp_path / "child.yaml", f"base: {TINY}\noptim: {{lr: 2.0e-3}}\n")
    assert load_recipe(child, ["optim.lr=5e-4"]).optim.lr == 5e-4


@pytest.mark.parametrize(
    "files, says",
    [
        (
            {"a.yaml": "base: b.yaml\n", "b.yaml": "base: a.yaml\n"},
            "a.yaml: its base chain loops (a.yaml -> b.yaml -> a.yaml)",
        ),
        ({"a.yaml": "base: a.yaml\n"}, "its base chain loops (a.yaml -> a.yaml)"),
        ({"a.yaml": "base: nowhere.yaml\n"}, "a.yaml: base nowhere.yaml not found"),
        ({"a.yaml": "base: [b.yaml]\n"}, "a.yaml: base must be the path of another recipe"),
        ({"a.yaml": "base: b.yaml\n", "b.yaml": "optim: {lr: [\n"}, "b.yaml: cannot parse YAML"),
        (
            {"a.yaml": f"base: {TINY}\noptim: {{rl: 1.0}}\n"},
            "a.yaml: unknown recipe key 'optim.rl'; did you mean optim.lr?",
        ),
        (
            {"a.yaml": "base: b.yaml\n", "b.yaml": f"base: {TINY}\nrun: {{dri: x}}\n"},
            "b.yaml: unknown recipe key 'run.dri'",
        ),
    ],
)
def test_bad_bases_are_one_line_errors_naming_the_file(tmp_path, files, says):
    for name, text in files.items():
        write(tmp_path / name, text)
    with pytest.raises(ConfigError) as e:
        load_recipe(tmp_path / "a.yaml")
    assert says in str(e.value) and "\n" not in str(e.value)


def test_print_config_shows_the_merged_recipe(tmp_path):
    child = write(tmp_path / "child.yaml", f"base: {TINY}\noptim: {{lr: 2.0e-3}}\nprobes: {{every_n_steps: 7}}\n")
    r = subprocess.run(
        [sys.executable, "-m", "stuffed_mamba", "fit", str(child), "--print-config"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert r.returncode == 0, r.stderr
    printed = yaml.safe_load(r.stdout)
    assert "base" not in printed
    assert printed["optim"]["lr"] == 2.0e-3 and printed["optim"]["total_steps"] == load_recipe(TINY).optim.total_steps
    assert printed["probes"]["every_n_steps"] == 7
    assert {printed["probes"][p]["every_n_steps"] for p in ("passkey", "states", "memory_lengths")} == {7}


# ---------------------------------------------------------------------------- group defaults


def probe_values(cfg, key: str) -> dict:
    return {p: getattr(getattr(cfg.probes, p), key) for p in ("passkey", "retention", "states", "position_loss")}


def test_group_defaults_reach_every_probe_that_does_not_set_its_own(tmp_path):
    r = write(
        tmp_path / "r.yaml",
        f"base: {TINY}\nprobes:\n  every_n_steps: 40\n  prefill_chunk: 256\n  states: {{every_n_steps: 80}}\n",
    )
    cfg = load_recipe(r)
    assert probe_values(cfg, "every_n_steps") == {"passkey": 40, "retention": 40, "states": 80, "position_loss": 40}
    assert cfg.probes.memory_lengths.every_n_steps == 40
    # the base's retention sets its own prefill_chunk (4096), in another file: this file's group key wins
    assert set(probe_values(cfg, "prefill_chunk").values()) == {256}


def test_without_group_keys_each_probe_keeps_its_value(tmp_path):
    r = write(tmp_path / "r.yaml", "run: {dir: runs/x}\nmodel: {d_model: 32, n_layer: 2}\n")
    cfg = load_recipe(r, ["probes.passkey.every_n_steps=5"])
    from stuffed_mamba.probes.registry import get

    default = get("retention").Config().every_n_steps
    assert cfg.probes.every_n_steps is None and cfg.probes.passkey.every_n_steps == 5
    assert cfg.probes.retention.every_n_steps == default


def test_group_override_on_the_command_line_and_per_probe_overrides():
    """`probes.every_n_steps=N` re-times every probe of the recipe; a probe named on the same command
    line keeps its own; the recipe's per-probe values (tests and sweeps override them) still work."""
    cfg = load_recipe(TINY, ["probes.every_n_steps=7", "probes.states.every_n_steps=9"])
    assert probe_values(cfg, "every_n_steps") == {"passkey": 7, "retention": 7, "states": 9, "position_loss": 7}
    cfg = load_recipe(TINY, ["probes.passkey.every_n_steps=3"])
    assert cfg.probes.passkey.every_n_steps == 3 and cfg.probes.states.every_n_steps == 60


def test_a_probes_section_given_as_a_dict_takes_its_group_defaults():
    """build_callbacks takes the section as a ProbesConfig, a DictConfig or a dict: a dict is one layer."""
    from stuffed_mamba.probes.registry import as_probes_config

    cfg = SimpleNamespace(
        probes=as_probes_config({"every_n_steps": 7, "prefill_chunk": 128, "states": {"every_n_steps": 9}})
    )
    assert probe_values(cfg, "every_n_steps") == {"passkey": 7, "retention": 7, "states": 9, "position_loss": 7}
    assert set(probe_values(cfg, "prefill_chunk").values()) == {128}
    assert as_probes_config(to_dict(load_recipe(TINY))["probes"]) == load_recipe(TINY).probes  # a whole section


def test_resuming_a_run_saved_before_the_group_keys_reports_no_change():
    """A run.dir's recipe.yaml written before `probes.every_n_steps` existed holds each probe's period
    only; resumed with the same values, nothing is reported as changed, and a changed period still is."""
    from stuffed_mamba.training.resume import recipe_changes

    now = to_dict(load_recipe(TINY))
    saved = to_dict(load_recipe(TINY))
    del saved["probes"]["every_n_steps"], saved["probes"]["prefill_chunk"]
    assert recipe_changes(saved, now) == []
    later = to_dict(load_recipe(TINY, ["probes.every_n_steps=120"]))
    assert "probes.passkey.every_n_steps: 60 -> 120" in recipe_changes(saved, later)


def test_tiny_cpu_passkey_is_tiny_cpu_retimed():
    """The delta's one group key gives all five probes its period."""
    cfg = load_recipe(ROOT / "recipes/tiny_cpu_passkey.yaml")
    assert {getattr(cfg.probes, p).every_n_steps for p in ("passkey", "retention", "states", "position_loss")} == {300}
    assert cfg.probes.memory_lengths.every_n_steps == 300


# ---------------------------------------------------------------------------- sweep recipes


SWEEP = """\
base: {base}
out_dir: {out}
models:
  s: {{d_model: 32, n_layer: 2, d_state: 16, headdim: 16}}
train_lengths: [64, 128]
overrides: ["probes.enabled=false", "trainer.max_steps=2"]
eval:
  source: data/sample
"""


def test_a_sweep_recipe_may_build_on_another(tmp_path):
    """A sweep's base is another sweep (merged: its keys over the base's) or, at the end of the chain,
    the `fit` recipe its cells train, relative to the file that names it."""
    from stuffed_mamba.sweep import expand, load_sweep

    write(tmp_path / "fit/base.yaml", TINY.read_text())
    write(tmp_path / "sweeps/parent.yaml", SWEEP.format(base="../fit/base.yaml", out=tmp_path / "out"))
    child = write(tmp_path / "other/child.yaml", "base: ../sweeps/parent.yaml\ntrain_lengths: [256]\n")
    recipe, base = load_sweep(child)
    assert base.resolve() == (tmp_path / "fit/base.yaml").resolve()
    assert recipe.train_lengths == [256] and list(recipe.models) == ["s"]
    assert recipe.overrides == ["probes.enabled=false", "trainer.max_steps=2"]
    assert [c.name for c in expand(recipe, base)] == ["s_T256"]


def test_a_child_sweep_adds_overrides_without_restating_them(tmp_path):
    """`extra_overrides` go after the base's `overrides` (a merged list would replace them), and the
    command line can replace them: the later value of a key wins in `fit`."""
    from stuffed_mamba.sweep import expand, load_sweep

    write(tmp_path / "fit/base.yaml", TINY.read_text())
    write(tmp_path / "sweeps/parent.yaml", SWEEP.format(base="../fit/base.yaml", out=tmp_path / "out"))
    child = write(tmp_path / "sweeps/child.yaml", "base: parent.yaml\nextra_overrides: [trainer.max_steps=3]\n")
    recipe, base = load_sweep(child)
    assert recipe.overrides == ["probes.enabled=false", "trainer.max_steps=2", "trainer.max_steps=3"]
    max_steps = [o for o in expand(recipe, base)[0].overrides if o.startswith("trainer.max_steps")]
    assert max_steps[-1] == "trainer.max_steps=3"
    recipe, _ = load_sweep(child, ["extra_overrides=[optim.initial_state=passed]"])
    assert recipe.overrides[-1] == "optim.initial_state=passed" and "trainer.max_steps=3" not in recipe.overrides


def test_a_sweep_chain_that_loops_is_one_line(tmp_path):
    from stuffed_mamba.sweep import load_sweep

    write(tmp_path / "a.yaml", SWEEP.format(base="b.yaml", out=tmp_path))
    write(tmp_path / "b.yaml", SWEEP.format(base="a.yaml", out=tmp_path))
    with pytest.raises(ValueError, match=r"its base chain loops \(a.yaml -> b.yaml -> a.yaml\)") as e:
        load_sweep(tmp_path / "a.yaml")
    assert "\n" not in str(e.value)


# ---------------------------------------------------------------------------- the shipped families


@pytest.mark.parametrize(
    "recipe, base",
    [
        ("mamba2_130m_256k.yaml", "mamba2_370m_256k.yaml"),
        ("mamba2_780m_256k.yaml", "mamba2_370m_256k.yaml"),
        ("mamba2_370m_256k_pg19.yaml", "mamba2_370m_256k.yaml"),
        ("mamba2_36m_scratch.yaml", "mamba2_370m_256k.yaml"),
        ("mamba2_47m_scratch.yaml", "mamba2_36m_scratch.yaml"),
        ("mamba2_85m_scratch.yaml", "mamba2_36m_scratch.yaml"),
        ("tiny_cpu_passkey.yaml", "tiny_cpu.yaml"),
    ],
)
def test_shipped_deltas_are_short_and_start_with_what_they_are_for(recipe, base):
    text = (ROOT / "recipes" / recipe).read_text()
    assert yaml.safe_load(text)["base"] == base
    keys = [line for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    assert len(keys) <= 25, f"{recipe}: {len(keys)} lines of keys, a delta states only what it changes"
    assert text.startswith("# ") and base in text.split("\nbase:")[0], "the header names its base"
