"""The probe contract: every registered probe appears in training callbacks, the eval CLI and sweeps;
the example probe added through the contract alone (memory lengths 1/(1-alpha)) measures what it says."""

import json
import math
from types import SimpleNamespace

import pytest
import torch

from stuffed_mamba.probes.memory_lengths import memory_lengths
from stuffed_mamba.probes.registry import PROBE_MODULES, Context, all_probes, as_config
from stuffed_mamba.probes.retention import first_token_retention

from .conftest import ByteTok, make_tiny_lm


def test_memory_lengths_match_the_retention_of_a_short_text():
    """tau = 1/(1 - exp(mean_t Delta_t A)) against eq. 6's alpha_{1:T} = exp(sum_t Delta_t A) (retention probe)."""
    model = make_tiny_lm()
    ids = torch.randint(0, 256, (1, 23), generator=torch.Generator().manual_seed(1))
    tau = memory_lengths(model, ids, chunk_size=7)  # uneven chunks
    alpha_1T = first_token_retention(model, ids)[:, :, -1].double()  # [L, H]
    mean_log_alpha = torch.log(alpha_1T) / ids.shape[1]
    ref = 1.0 / (1.0 - torch.exp(mean_log_alpha))
    assert tau.shape == ref.shape and torch.all(tau >= 1.0)
    assert torch.allclose(tau, ref, rtol=1e-4), (tau, ref)


def test_every_probe_is_in_the_callbacks_the_eval_cli_and_sweeps(tmp_path):
    from stuffed_mamba.callbacks import build_callbacks

    from stuffed_mamba.cli import build_parser
    from stuffed_mamba.sweep.recipe import EvalConfig
    from stuffed_mamba.training.config import RecipeConfig

    names = list(PROBE_MODULES)
    assert "memory_lengths" in names
    data = SimpleNamespace(train_length=64, source="nowhere", listing=None)
    # every probe turned on (effrem is off by default)
    cbs = build_callbacks({n: {"enabled": True} for n in names}, tokenizer=ByteTok(), data_cfg=data)
    assert [c.name for c in cbs[:-1]] == names and type(cbs[-1]).__name__ == "ForgettingDashboard"
    layout = next(c for c in cbs[:-1] if c.name == "memory_lengths").layout()
    assert any("memory length" in title for title in layout)
    for name in names:
        assert hasattr(RecipeConfig().probes, name) and hasattr(EvalConfig(), name)
    parser = build_parser(["eval"])
    args = parser.parse_args(["eval", "memory-lengths", "--checkpoint", "x", "--length", "2K"])
    assert args.probe_name == "memory_lengths" and args.cfg_length == 2048


def test_defaults_exist_once():
    """The eval flags and the sweep's eval section take their defaults from the probe's config."""
    from stuffed_mamba.sweep.recipe import EvalConfig

    for probe in all_probes():
        assert getattr(EvalConfig(), probe.name) == as_config(probe)
    assert as_config(all_probes()[0], {"samples": 3}).samples == 3
    with pytest.raises(Exception, match="nope"):
        as_config(all_probes()[0], {"nope": 1})


def test_the_example_probe_through_the_eval_cli(tmp_path, capsys):
    from stuffed_mamba.cli import main

    folder = tmp_path / "ckpt"
    make_tiny_lm().save_pretrained(folder)
    out = tmp_path / "out"
    rc = main(
        [
            "eval",
            "memory-lengths",
            "--checkpoint",
            str(folder),
            "--tokenizer",
            "bytes",
            "--train-length",
            "64",
            "--length",
            "300",
            "--out",
            str(out),
            "--no-progress",
        ]
    )
    assert rc == 0
    js = json.loads((out / "memory-lengths.json").read_text())
    assert js["tau_min"] <= js["tau_median"] <= js["tau_max"]
    assert js["log10_spread"] == pytest.approx(math.log10(js["tau_max"] / js["tau_min"]))
    assert (out / "memory-lengths_heads.png").is_file()
    assert "heads beyond T_train = 64" in capsys.readouterr().out


def test_context_errors_are_one_line():
    ctx = Context()
    with pytest.raises(ValueError, match="--train-length"):
        ctx.need_train_length("x")
    with pytest.raises(ValueError, match="--data"):
        ctx.text("x", 10, 1, 1)
