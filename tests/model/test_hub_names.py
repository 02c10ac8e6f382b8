"""A HuggingFace hub name (OWNER/NAME) works wherever a checkpoint folder does (DESIGN section 9):
`fit model.init_from=OWNER/NAME` and `eval --checkpoint OWNER/NAME` resolve it through the local
HuggingFace cache, with HF_HUB_OFFLINE=1 from the cache only; an unknown name offline is one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from stuffed_mamba.model import Mamba2Config, Mamba2LM
from tests.helpers import TINY_ARCH

SHA = "0123456789abcdef0123456789abcdef01234567"
TINY = {**TINY_ARCH, "vocab_size": 257}


@pytest.fixture(scope="module")
def hub_cache(tmp_path_factory):
    """An HF cache holding tiny/mamba2-tiny at SHA: models--tiny--mamba2-tiny/{refs/main, snapshots/SHA/}."""
    cache = tmp_path_factory.mktemp("hf_cache")
    repo = cache / "models--tiny--mamba2-tiny"
    torch.manual_seed(0)
    Mamba2LM(Mamba2Config(**TINY)).save_pretrained(repo / "snapshots" / SHA)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(SHA)
    return cache


def run(hub_cache, *argv):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(hub_cache)}
    return subprocess.run(
        [sys.executable, "-m", "stuffed_mamba", *argv], capture_output=True, text=True, env=env, timeout=300
    )


@pytest.mark.slow  # a subprocess fit: ~50 s on the shared machine
def test_fit_from_a_hub_name_offline(hub_cache, tmp_path):
    r = run(
        hub_cache,
        "fit",
        "recipes/tiny_cpu.yaml",
        "model.init_from=tiny/mamba2-tiny",
        "model.d_model=null",
        "model.n_layer=null",
        "model.d_state=null",
        "model.headdim=null",
        "model.chunk_size=16",
        "data.tokenizer=bytes",
        "data.segments=2",
        "data.train_length=16",
        "data.batch_size=2",
        "optim.total_steps=4",
        "optim.warmup_steps=1",
        "probes.enabled=false",
        "trainer.enable_progress_bar=false",
        f"run.dir={tmp_path / 'run'}",
    )
    assert r.returncode == 0, r.stderr
    assert "init from tiny/mamba2-tiny" in r.stdout
    ckpt = torch.load(tmp_path / "run/checkpoints/last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 4 and ckpt["mamba2_config"]["d_model"] == 32


@pytest.mark.extended("fit from a hub name offline runs in CI: the same resolution through model/io")
def test_eval_of_a_hub_name_offline(hub_cache, tmp_path):
    out = tmp_path / "eval"
    r = run(
        hub_cache,
        "eval",
        "states",
        "--checkpoint",
        "tiny/mamba2-tiny",
        "--tokenizer",
        "bytes",
        "--train-length",
        "64",
        "--length",
        "128",
        "--points",
        "4",
        "--out",
        str(out),
        "--no-progress",
        "--device",
        "cpu",
    )
    assert r.returncode == 0, r.stderr
    payload = json.loads((out / "states.json").read_text())
    assert payload["checkpoint"].endswith(f"snapshots/{SHA}")


def test_an_unknown_hub_name_offline_is_one_line(hub_cache, tmp_path):
    r = run(
        hub_cache,
        "eval",
        "states",
        "--checkpoint",
        "nobody/no-such-model",
        "--tokenizer",
        "bytes",
        "--train-length",
        "64",
        "--out",
        str(tmp_path / "o"),
        "--no-progress",
    )
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert r.returncode == 2 and len(lines) == 1, r.stderr
    assert "nobody/no-such-model" in lines[0] and "HF_HUB_OFFLINE" in lines[0]


def test_resolution_prefers_a_local_folder(tmp_path, monkeypatch):
    from stuffed_mamba.model.pretrained import is_hub_name, resolve_folder

    monkeypatch.chdir(tmp_path)
    (tmp_path / "owner" / "name").mkdir(parents=True)
    assert resolve_folder("owner/name").resolve() == tmp_path / "owner" / "name"
    assert is_hub_name("state-spaces/mamba2-370m")
    assert not any(is_hub_name(s) for s in ("runs/x/last.ckpt", "/abs/path", "./a/b", "a/b/c", "name"))
    with pytest.raises(FileNotFoundError, match="checkpoint not found: runs/x/last.ckpt"):
        resolve_folder("runs/x/last.ckpt")
