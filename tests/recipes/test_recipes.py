"""Every recipe loads and validates; the 256K recipes carry the paper's values (appendix F) and
build at tiny size; the from-scratch recipes' N_S comments are right."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from stuffed_mamba.analysis import predicted_thresholds
from stuffed_mamba.model import Mamba2Config, Mamba2LM
from stuffed_mamba.training.config import load_recipe
from stuffed_mamba.training.fit import build_model
from stuffed_mamba.training.module import TBPTTModule
from stuffed_mamba.training.report import startup_report

RECIPES = sorted(str(p) for p in Path("recipes").glob("*.yaml"))
SWEEPS = sorted(str(p) for p in Path("recipes/sweeps").glob("*.yaml"))
CONTINUED = {"130m": 768, "370m": 1024, "780m": 1536}  # official d_model


def test_the_recipes_exist():
    names = {Path(p).name for p in RECIPES}
    assert {"tiny_cpu.yaml", "mamba2_130m_256k.yaml", "mamba2_370m_256k.yaml", "mamba2_780m_256k.yaml"} <= names
    assert len([n for n in names if n.endswith("_scratch.yaml")]) >= 3


@pytest.mark.parametrize("recipe", RECIPES)
def test_every_recipe_loads_and_validates(recipe):
    cfg = load_recipe(recipe)
    assert cfg.run.dir and cfg.data.segments >= 1


@pytest.mark.parametrize("sweep", SWEEPS)
def test_every_sweep_recipe_loads_and_every_cell_validates(sweep):
    """A sweep recipe is data too: its grid expands and each cell's `fit` overrides pass the recipe schema."""
    from stuffed_mamba.sweep import expand, load_sweep

    recipe, base = load_sweep(sweep)
    cells = expand(recipe, base)
    assert len(cells) == len(recipe.models) * len(recipe.train_lengths)
    assert recipe.eval.position_loss.enabled and recipe.eval.source


@pytest.mark.parametrize("size", sorted(CONTINUED))
def test_256k_recipes_hold_the_papers_values(size):
    cfg = load_recipe(f"recipes/mamba2_{size}_256k.yaml")
    d, o, t = cfg.data, cfg.optim, cfg.trainer
    assert cfg.model.init_from and size in cfg.model.init_from
    assert d.segments == 12 and d.min_doc_tokens == 4096
    assert (o.warmup_steps, o.total_steps, o.decay_fraction, o.decay) == (1000, 50_000, 0.1, "linear")
    assert (o.weight_decay, o.grad_clip, o.optimizer_step) == (0.1, 1.0, "segment")
    assert t.precision == "bf16-mixed" and t.strategy == "deepspeed" and t.deepspeed.stage == 2
    tokens_per_step = t.devices * t.num_nodes * d.batch_size * d.train_length
    assert 0.45e6 <= tokens_per_step <= 0.55e6
    assert cfg.run.resume == "auto"
    # T_train at or above the paper's predicted forgetting threshold for the official size
    official = Mamba2Config(d_model=CONTINUED[size], n_layer=24 if size == "130m" else 48, vocab_size=50277)
    assert d.train_length >= predicted_thresholds(official)["t_forget"]
    assert max(cfg.probes.passkey.lengths) == 262144


@pytest.mark.parametrize("size, fmt", [("130m", "mamba_ssm"), ("370m", "hf"), ("780m", "mamba_ssm")])
def test_256k_recipes_build_at_tiny_size(size, fmt, tmp_path):
    """The recipe as written, with a tiny official-format (or transformers) checkpoint as init_from."""
    tiny = Mamba2LM(Mamba2Config(d_model=32, n_layer=2, vocab_size=304, d_state=16, headdim=16, chunk_size=16))
    tiny.save_pretrained(tmp_path / "ckpt", format=fmt)
    cfg = load_recipe(
        f"recipes/mamba2_{size}_256k.yaml",
        [f"model.init_from={tmp_path / 'ckpt'}", "model.backend=torch", "data.tokenizer=bytes"],
    )

    class Bytes:
        vocab_size = 257

    model = build_model(cfg, Bytes())
    assert model.gradient_checkpointing  # activation checkpointing from the recipe
    for k, v in tiny.state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k
    module = TBPTTModule(model, cfg.optim)
    groups = module.configure_optimizers().param_groups
    assert groups[0]["weight_decay"] == 0.1 and groups[1]["weight_decay"] == 0.0
    lines = startup_report(cfg, model, world_size=8, resume_from=None, recipe="x")
    assert any(line.startswith("deepspeed ") and '"gradient_clipping": 1.0' in line for line in lines)


def test_startup_report_warns_below_the_forgetting_threshold(tmp_path):
    """370M's N_S predicts T_forget = 62.3K: T_train = 8K gets a warning, the recipe's 64K none."""
    with torch.device("meta"):  # shapes only: no 1.5 GB of weights
        model = Mamba2LM(Mamba2Config(d_model=1024, n_layer=48, vocab_size=50277))
    for length, warned in ((8192, True), (65536, False)):
        cfg = load_recipe("recipes/mamba2_370m_256k.yaml", [f"data.train_length={length}"])
        lines = startup_report(cfg, model, world_size=8, resume_from=None, recipe="x")
        assert any(line.startswith("WARNING: train_length 8192") for line in lines) == warned
        assert "state size   N_S = 12,914,688 floats (12.915M: SSM 12,582,912 + conv 331,776)" in lines
        assert "parameters   368," in "\n".join(lines)
        assert any(line.startswith(f"tokens/step  {length * 8:,}") for line in lines)


@pytest.mark.parametrize("recipe", [p for p in RECIPES if p.endswith("_scratch.yaml")])
def test_scratch_recipes_state_size_comment(recipe):
    cfg = load_recipe(recipe)
    m = cfg.model
    config = Mamba2Config(
        d_model=m.d_model,
        n_layer=m.n_layer,
        vocab_size=m.vocab_size,
        d_state=m.d_state,
        headdim=m.headdim,
        expand=m.expand,
    )
    stated = re.search(r"N_S = ([\d,]+) floats", Path(recipe).read_text())
    assert stated, "the recipe states its N_S"
    assert int(stated.group(1).replace(",", "")) == config.state_size
    assert m.init_from is None


def test_tiny_cpu_is_small_and_offline():
    cfg = load_recipe("recipes/tiny_cpu.yaml")
    assert cfg.model.init_from is None and cfg.trainer.accelerator == "cpu"
    assert not cfg.data.source.startswith("http") and cfg.probes.enabled
    assert cfg.data.segments == 12
