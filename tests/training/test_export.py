"""A tiny run's checkpoint leaves as folders others load: transformers' Mamba2ForCausalLM gives our
logits, and the mamba_ssm layout loads back through Mamba2LM.from_pretrained bit-exactly."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from stuffed_mamba.model import Mamba2LM
from stuffed_mamba.model.io import load_checkpoint
from stuffed_mamba.training.fit import fit
from tests.helpers import rel_err
from tests.training.common import tiny_recipe
from tests.training.fakes import FakeEpisodeLoader


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("export_run")
    fit(
        tiny_recipe(run_dir, "trainer.max_steps=6"),
        log=lambda s: None,
        loader_factory=lambda r, w: FakeEpisodeLoader(batch_size=2, segments=3, train_length=16, rank=r, world_size=w),
    )
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    return ckpt, load_checkpoint(ckpt).model


def export_cli(ckpt, out, fmt):
    r = subprocess.run(
        [sys.executable, "-m", "stuffed_mamba", "export", str(ckpt), str(out), "--format", fmt],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr


def test_trained_weights_are_the_checkpoints(trained):
    ckpt, model = trained
    sd = torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]
    for k, v in model.state_dict().items():
        assert torch.equal(v, sd["model." + k]), k


def test_hf_export_loads_in_transformers_with_our_logits(trained, tmp_path):
    from transformers import Mamba2ForCausalLM

    ckpt, model = trained
    export_cli(ckpt, tmp_path / "hf", "hf")
    hf = Mamba2ForCausalLM.from_pretrained(tmp_path / "hf").eval()
    ids = torch.randint(0, 257, (2, 37), generator=torch.Generator().manual_seed(1))  # not a chunk multiple
    with torch.no_grad():
        ours = model(ids).logits
        theirs = hf(ids).logits
    assert theirs.shape == ours.shape
    assert rel_err(theirs, ours) < 1e-4


def test_mamba_ssm_export_round_trips_bit_exactly(trained, tmp_path):
    ckpt, model = trained
    out = tmp_path / "mamba_ssm"
    export_cli(ckpt, out, "mamba_ssm")
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["ssm_cfg"]["layer"] == "Mamba2" and cfg["d_model"] == model.config.d_model
    back = Mamba2LM.from_pretrained(out).eval()
    for k, v in model.state_dict().items():
        assert torch.equal(v, back.state_dict()[k]), k
    # the file mamba_ssm's MambaLMHeadModel.from_pretrained reads: every key, lm_head tied
    bin_sd = torch.load(out / "pytorch_model.bin", map_location="cpu", weights_only=True)
    assert set(bin_sd) == set(model.state_dict())
    assert torch.equal(bin_sd["lm_head.weight"], bin_sd["backbone.embedding.weight"])
    ids = torch.randint(0, 257, (1, 20))
    with torch.no_grad():
        assert torch.equal(model(ids).logits, back(ids).logits)


def test_export_of_a_missing_checkpoint_is_one_line(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "stuffed_mamba", "export", str(tmp_path / "nope.ckpt"), str(tmp_path / "o")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "checkpoint not found" in r.stderr


def test_export_is_readable_by_others_and_carries_the_runs_tokenizer(tmp_path):
    """safetensors creates -rw-------; an export gets what any new file gets (0o666 minus the umask),
    and holds the tokenizer the run was trained with, loadable by tokenizers and by transformers."""
    import os

    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    run_dir = tmp_path / "run"
    fit(
        tiny_recipe(run_dir, "trainer.max_steps=3", "data.tokenizer=data/sample/tokenizer.json"),
        log=lambda s: None,
        loader_factory=lambda r, w: FakeEpisodeLoader(batch_size=2, segments=3, train_length=16, rank=r, world_size=w),
    )
    old = os.umask(0o022)
    try:
        for fmt in ("mamba_ssm", "hf"):
            out = tmp_path / fmt
            export_cli(run_dir / "checkpoints/last.ckpt", out, fmt)
            for f in out.iterdir():
                assert f.stat().st_mode & 0o777 == 0o644, (f.name, oct(f.stat().st_mode))
            text = "The passkey is 71432. Remember it."
            want = Tokenizer.from_file("data/sample/tokenizer.json").encode(text, add_special_tokens=False).ids
            assert Tokenizer.from_file(str(out / "tokenizer.json")).encode(text, add_special_tokens=False).ids == want
            auto = AutoTokenizer.from_pretrained(out)
            assert auto(text, add_special_tokens=False).input_ids == want
            assert auto.eos_token == "<|endoftext|>"
    finally:
        os.umask(old)
