"""A bad recipe key, a wrong type and an impossible value each give a one-line error naming it."""

import subprocess
import sys

import pytest

from stuffed_mamba.training.config import ConfigError, load_recipe

TINY = "recipes/tiny_cpu.yaml"


@pytest.mark.parametrize(
    "override, names",
    [
        ("optim.learning_rate=1e-3", "optim.learning_rate"),  # unknown key
        ("data.segmnts=4", "data.segmnts"),  # unknown key in the data engineer's section
        ("probes.passkey.lenghts=[1]", "probes.passkey.lenghts"),  # ... and in the probes' section
        ("optim.lr=fast", "optim.lr"),  # wrong type
        ("trainer.max_steps=1.5", "trainer.max_steps"),  # wrong type
        ("optim.lr=-1", "optim.lr"),  # impossible value
        ("optim.warmup_steps=600", "optim.warmup_steps"),  # impossible: warm-up >= total
        ("data.segments=0", "data.segments"),  # impossible, checked by DataConfig
        ("trainer.strategy=fsdp", "trainer.strategy"),
        ("trainer.precision=16-mixed", "trainer.precision"),
        ("optim.bptt=exact", "optim.bptt"),
    ],
)
def test_errors_are_one_line_and_name_the_key(override, names):
    with pytest.raises(ConfigError) as e:
        load_recipe(TINY, [override])
    msg = str(e.value)
    assert names in msg
    assert "\n" not in msg


def test_impossible_combinations():
    with pytest.raises(ConfigError, match="optim.bptt: full .* needs optim.optimizer_step=episode"):
        load_recipe(TINY, ["optim.bptt=full"])  # tiny_cpu steps per segment
    assert load_recipe(TINY, ["optim.bptt=full", "optim.optimizer_step=episode"]).optim.bptt == "full"
    assert load_recipe(TINY, []).optim.bptt == "truncated"
    with pytest.raises(ConfigError, match="trainer.deepspeed.offload_parameters"):
        load_recipe(TINY, ["trainer.deepspeed.offload_parameters=true"])
    with pytest.raises(ConfigError, match="model.n_layer"):
        load_recipe(TINY, ["model.n_layer=null"])


def test_overrides_merge_and_keep_types():
    cfg = load_recipe(TINY, ["optim.lr=1e-4", "trainer.devices=2", "run.resume=auto"])
    assert cfg.optim.lr == 1e-4 and cfg.trainer.devices == 2 and cfg.run.resume == "auto"
    assert cfg.data.segments == 12


def test_cli_prints_one_line_and_exits_2_before_building_anything(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "stuffed_mamba", "fit", TINY, "optim.nope=1", f"run.dir={tmp_path}/run"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("stuffed-mamba fit: error: unknown recipe key 'optim.nope'")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "override, names",
    [
        ("data.source=/no/such/folder", "data source '/no/such/folder'"),
        ("data.tokenizer=/no/such/tokenizer.json", "data.tokenizer"),
        ("data.batch_size=64", "row streams"),  # more rows than the sample corpus has shards
    ],
)
def test_bad_data_settings_are_one_line_before_training(override, names, tmp_path):
    from stuffed_mamba.training.fit import fit

    cfg = load_recipe(TINY, [override, f"run.dir={tmp_path}", "probes.enabled=false"])
    with pytest.raises(ConfigError) as e:
        fit(cfg, log=lambda s: None)
    assert names in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "checkpoints").exists()


@pytest.mark.parametrize(
    "override, suggestion",
    [
        ("optim.rl=1e-3", "optim.lr"),  # a typo
        ("lr=1e-3", "optim.lr"),  # the right name in the wrong place
        ("optim.learning_rate=1e-3", "optim.lr"),  # another tool's name
        ("data.segmnts=4", "data.segments"),
    ],
)
def test_an_unknown_key_suggests_the_nearest_valid_one(override, suggestion):
    with pytest.raises(ConfigError, match=f"unknown recipe key .*; did you mean {suggestion}\\?$"):
        load_recipe(TINY, [override])


def test_print_config_shows_the_values_the_run_will_use():
    """model fields left null print as what the run builds (Mamba2Config defaults, the tokenizer's vocab,
    an official checkpoint's shape), and trainer.max_steps as where the job stops."""
    r = subprocess.run(
        [sys.executable, "-m", "stuffed_mamba", "fit", TINY, "--print-config"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    assert "null" not in r.stdout.split("data:")[0].replace("init_from: null", "")
    for line in ("d_conv: 4", "expand: 2", "vocab_size: 1024", "d_model: 128", "max_steps: 600"):
        assert f"  {line}\n" in r.stdout, line
    from omegaconf import OmegaConf

    from stuffed_mamba.training.config import resolved

    cfg = resolved(load_recipe("recipes/mamba2_370m_256k.yaml"))  # not downloaded: known by its name
    assert (cfg.model.d_model, cfg.model.n_layer, cfg.model.d_state, cfg.model.headdim) == (1024, 48, 128, 64)
    assert cfg.model.init_from == "state-spaces/mamba2-370m" and OmegaConf.structured(cfg) is not None
