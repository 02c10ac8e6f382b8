"""N_S of a configuration: the paper's number, agreement with Mamba2Config.state_size, every input form."""

import json
from pathlib import Path

import pytest
import torch

from stuffed_mamba.analysis.state_size import OFFICIAL_SIZES, resolve, state_size
from stuffed_mamba.cli import main
from tests.helpers import OFFICIAL_370M_CONFIG_JSON, rel_err


def by_hand(d_model, n_layer, N=128, P=64, expand=2, G=1, d_conv=4):
    d_inner = expand * d_model
    H = d_inner // P
    return n_layer * (H * P * N + (d_inner + 2 * G * N) * (d_conv - 1))


def test_780m_is_the_papers_19_3M():
    assert resolve("780m").state_size == 19_353_600
    assert state_size(1536, 48) == 19_353_600


@pytest.mark.parametrize("name", list(OFFICIAL_SIZES))
def test_official_sizes(name):
    f = OFFICIAL_SIZES[name]
    assert resolve(name).state_size == by_hand(f["d_model"], f["n_layer"])
    assert resolve(f"state-spaces/mamba2-{name}").state_size == by_hand(f["d_model"], f["n_layer"])


@pytest.mark.parametrize(
    "fields",
    [
        dict(d_model=1536, n_layer=48),
        dict(d_model=1024, n_layer=48),
        dict(d_model=64, n_layer=2, d_state=16, headdim=16),
        dict(d_model=48, n_layer=3, d_state=8, headdim=8, ngroups=2, expand=2),
        dict(d_model=32, n_layer=1, d_state=32, headdim=32, d_conv=3, expand=4),
    ],
)
def test_agrees_with_Mamba2Config(fields):
    from stuffed_mamba.model import Mamba2Config

    cfg = Mamba2Config(vocab_size=256, **fields)
    assert resolve(cfg).state_size == cfg.state_size == resolve(dict(fields)).state_size


def test_official_config_json_folder(tmp_path):
    # the shape of state-spaces/mamba2-370m's config.json
    cfg = dict(OFFICIAL_370M_CONFIG_JSON)
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    assert resolve(tmp_path).state_size == resolve("370m").state_size
    assert resolve(tmp_path / "config.json").state_size == resolve("370m").state_size


def test_mamba1_config_is_refused(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"d_model": 768, "n_layer": 24, "ssm_cfg": {"layer": "Mamba1"}}))
    with pytest.raises(ValueError, match="Mamba1"):
        resolve(tmp_path)


def test_transformers_config_json(tmp_path):
    from transformers import Mamba2Config as HFConfig

    hf = HFConfig(
        hidden_size=64,
        num_hidden_layers=3,
        state_size=16,
        head_dim=16,
        n_groups=2,
        expand=2,
        conv_kernel=4,
        num_heads=8,
        vocab_size=300,
    )
    hf.save_pretrained(tmp_path)
    assert resolve(tmp_path).state_size == by_hand(64, 3, N=16, P=16, G=2)


def test_recipe_model_section_and_init_from(tmp_path):
    (tmp_path / "r.yaml").write_text(
        "model:\n  d_model: 64\n  n_layer: 2\n  d_state: 16\n  headdim: 16\n  init_from: null\n"
    )
    assert resolve(tmp_path / "r.yaml").state_size == by_hand(64, 2, N=16, P=16)
    (tmp_path / "r2.yaml").write_text("model:\n  init_from: 780m\n")
    assert resolve(tmp_path / "r2.yaml").state_size == 19_353_600
    # an official checkpoint folder not downloaded here is known by its name
    (tmp_path / "r3.yaml").write_text("model:\n  init_from: checkpoints/mamba2-370m\n")
    assert resolve(tmp_path / "r3.yaml").state_size == resolve("370m").state_size


def test_every_shipped_recipe_has_a_state_size():
    from pathlib import Path

    recipes = sorted((Path(__file__).resolve().parents[2] / "recipes").glob("*.yaml"))
    assert recipes
    for r in recipes:
        assert resolve(r).state_size > 0, r


def test_cli_prints_official_sizes(capsys):
    assert main(["analyze", "state-size"]) == 0
    out = capsys.readouterr().out
    for d_model, n_layer in [(768, 24), (1024, 48), (1536, 48)]:
        assert f"{by_hand(d_model, n_layer):,}" in out
    assert main(["analyze", "state-size", "--config", "370m", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["state_size"] == 12_914_688
    assert rel_err(torch.tensor(d["predicted_t_forget"]), torch.tensor(62_000.0)) < 0.01


def test_cli_bad_config_is_one_line_error(capsys, tmp_path):
    assert main(["analyze", "state-size", "--config", str(tmp_path / "nope.json")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "nope.json" in err


def test_state_size_command_imports_no_torch():
    """`analyze state-size` is a calculator: it reads N_S from Mamba2Config without loading torch."""
    import subprocess
    import sys

    code = (
        "import sys; from stuffed_mamba.cli import main; "
        "rc = main(['analyze', 'state-size', '--config', '780m', '--config', 'recipes/tiny_cpu.yaml']); "
        "assert rc == 0; print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'lightning')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert "19,353,600" in out.stdout and out.stdout.strip().endswith("[]"), out.stdout


def test_one_n_s_formula():
    from stuffed_mamba.analysis.state_size import resolve
    from stuffed_mamba.model.config import Mamba2Config

    cfg = Mamba2Config(d_model=96, n_layer=3, d_state=16, headdim=24, ngroups=2, d_conv=3, vocab_size=300)
    assert resolve(cfg).state_size == cfg.state_size == cfg.ssm_state_size + cfg.conv_state_size
    # by hand: H = 192/24 = 8 heads of [P, N] = [24, 16]; conv over x, B, C: (192 + 2*2*16) * (3-1)
    assert cfg.state_size == 3 * (8 * 24 * 16 + (192 + 64) * 2)
