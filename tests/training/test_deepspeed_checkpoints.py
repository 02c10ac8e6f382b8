"""DeepSpeed checkpoint folders (`last.ckpt/`, `step-*.ckpt/`) are read like `.ckpt` files by every
reader of a trained model: `eval passkey|retention|states|loss`, `export`, the probes' loader
(issue 11, defect 2 / acceptance 5).

The folders come from the real DeepSpeed engine on the CPU, 2 ranks over gloo (tests/deepspeed_cpu):
- `fit_run`: `stuffed-mamba fit` of tiny_cpu under ZeRO-2, bf16-mixed (the 256K recipes' setting);
- `engine_folders`: ZeRO-2 and ZeRO-3 folders with the engine's fp32 master weights beside them,
  read from the live engine (tests/training/deepspeed_folders.py), the reference the readers must give.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from stuffed_mamba.cli import main
from stuffed_mamba.model.deepspeed_checkpoint import read_deepspeed_checkpoint
from stuffed_mamba.model.io import load_checkpoint

pytestmark = pytest.mark.slow  # each fixture launches 2 DeepSpeed ranks (30-180 s on the shared CPU)

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu"}
TINY_FIT = [
    "model.d_model=32",
    "model.n_layer=2",
    "model.d_state=16",
    "model.headdim=16",
    "model.chunk_size=16",
    "data.train_length=48",
    "data.segments=3",
    "data.batch_size=2",
    "trainer.strategy=deepspeed",
    "trainer.devices=2",
    "trainer.precision=bf16-mixed",
    "trainer.max_steps=6",
    "run.checkpoint_every_n_steps=3",
    "run.keep_every_n_steps=3",
    "run.overwrite=true",
    "probes.enabled=false",
    "trainer.enable_progress_bar=false",
]


def _run(argv, timeout=900):
    r = subprocess.run([sys.executable, "-m", *argv], capture_output=True, text=True, env=ENV, timeout=timeout)
    assert r.returncode == 0, r.stderr[-3000:]


@pytest.fixture(scope="session")
def fit_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("ds_fit")
    _run(["tests.deepspeed_cpu", "fit", "recipes/tiny_cpu.yaml", *TINY_FIT, f"run.dir={run_dir}"])
    return run_dir


@pytest.fixture(scope="session")
def engine_folders(tmp_path_factory):
    out = tmp_path_factory.mktemp("ds_engine")
    _run(["tests.training.deepspeed_folders", str(out)])
    return out


def _weights(folder_or_file: Path) -> dict:
    """The state dict of an exported mamba_ssm folder."""
    return torch.load(folder_or_file / "pytorch_model.bin", map_location="cpu", weights_only=True)


# ---------------------------------------------------------------------------------- exact weights


@pytest.mark.parametrize("stage", [2, 3])
def test_readers_give_the_engines_fp32_master_weights(engine_folders, stage):
    folder = engine_folders / f"zero{stage}"
    master = torch.load(engine_folders / f"zero{stage}_master.pt", weights_only=True)
    ckpt = read_deepspeed_checkpoint(folder)
    assert ckpt["global_step"] == 2 and "mamba2_config" in ckpt
    for name, ref in master.items():
        assert ckpt["state_dict"][name].dtype == torch.float32
        assert torch.equal(ckpt["state_dict"][name], ref), name
    loaded = load_checkpoint(folder)
    assert loaded.kind == "deepspeed" and loaded.step == 2
    for name, value in loaded.model.named_parameters():  # lm_head.weight is the embedding's (tied)
        assert torch.equal(value, master["model." + name]), name
    # the master weights are not the bf16 module's: the reader did not take the rounded copy
    assert not all(torch.equal(m, m.bfloat16().float()) for m in master.values())


@pytest.mark.parametrize("stage", [2, 3])
def test_doctor_reads_a_deepspeed_folder_through_model_io(engine_folders, stage, monkeypatch):
    import stuffed_mamba.model.io as io
    from stuffed_mamba.training.doctor.tiny_fit import _eval_read

    master = torch.load(engine_folders / f"zero{stage}_master.pt", weights_only=True)
    given, real = [], io.load_checkpoint
    monkeypatch.setattr(io, "load_checkpoint", lambda *a, **k: given.append(real(*a, **k)) or given[-1])
    assert _eval_read(engine_folders / f"zero{stage}") == (2, "DeepSpeed folder")
    assert len(given) == 1
    for name, value in given[0].model.named_parameters():
        assert torch.equal(value, master["model." + name]), name


@pytest.mark.parametrize("stage", [2, 3])
def test_export_of_a_deepspeed_folder_writes_the_master_weights(engine_folders, stage, tmp_path, capsys):
    master = torch.load(engine_folders / f"zero{stage}_master.pt", weights_only=True)
    assert main(["export", str(engine_folders / f"zero{stage}"), str(tmp_path / "out")]) == 0
    exported = _weights(tmp_path / "out")
    # mamba_ssm's layout is ours without the `model.` prefix
    assert set(exported) == {k.removeprefix("model.") for k in master} | {"lm_head.weight"}
    for name, ref in master.items():
        assert torch.equal(exported[name.removeprefix("model.")], ref), name


def test_fit_folder_holds_the_modules_weights_rounded_from_the_master(fit_run, tmp_path):
    """The fit's folder: exported weights (fp32 master, from the optimizer shards of both ranks)
    rounded to the module's dtype are the module's weights that rank 0 saved, bit for bit."""
    last = fit_run / "checkpoints" / "last.ckpt"
    assert main(["export", str(last), str(tmp_path / "out")]) == 0
    exported = _weights(tmp_path / "out")
    module = torch.load(last / "checkpoint" / "mp_rank_00_model_states.pt", weights_only=True)["module"]
    assert module, "ZeRO-2 keeps the module's weights in the model states"
    for name, value in module.items():
        assert exported[name.removeprefix("model.")].dtype == torch.float32
        assert torch.equal(exported[name.removeprefix("model.")].to(value.dtype), value), name


# ---------------------------------------------------------------------------------- the CLI


@pytest.mark.parametrize(
    "argv,first",
    [
        (["passkey", "--lengths", "300", "--samples", "2", "--max-new-tokens", "2", "--last-r", "200"], "passkey"),
        (["retention", "--length", "150"], "retention"),
        (["states", "--length", "150", "--points", "4"], "states"),
        (["loss", "--length", "150", "--samples", "1", "--min-doc-tokens", "1024", "--buckets", "4"], "loss"),
    ],
)
def test_every_eval_probe_reads_a_deepspeed_last_ckpt(fit_run, tmp_path, argv, first):
    """Acceptance 5: the tokenizer, T_train and evaluation text come from the run's recipe.yaml,
    as for a `.ckpt` file."""
    last = fit_run / "checkpoints" / "last.ckpt"
    assert last.is_dir()
    assert main(["eval", *argv, "--checkpoint", str(last), "--out", str(tmp_path), "--no-progress"]) == 0
    js = json.loads((tmp_path / f"{first}.json").read_text())
    assert js["step"] == 6 and js["train_length"] == 48


def test_a_kept_step_folder_is_read_too(fit_run, tmp_path):
    kept = fit_run / "checkpoints" / "step-0000003.ckpt"
    assert kept.is_dir()
    assert (
        main(
            [
                "eval",
                "states",
                "--checkpoint",
                str(kept),
                "--length",
                "100",
                "--points",
                "3",
                "--out",
                str(tmp_path),
                "--no-progress",
            ]
        )
        == 0
    )
    assert json.loads((tmp_path / "states.json").read_text())["step"] == 3


# ---------------------------------------------------------------------------------- bad folders


def _broken(engine_folders, tmp_path, how: str) -> Path:
    folder = tmp_path / "zero2"
    shutil.copytree(engine_folders / "zero2", folder)
    tag = folder / "checkpoint"
    if how == "no latest":
        (folder / "latest").unlink()
    elif how == "latest names nothing":
        (folder / "latest").write_text("global_step99")
    elif how == "missing shard":
        next(tag.glob("*rank_1_*optim_states.pt")).unlink()
    elif how == "truncated shard":
        shard = next(tag.glob("*rank_0_*optim_states.pt"))
        shard.write_bytes(shard.read_bytes()[:1000])
    elif how == "no model states":
        (tag / "mp_rank_00_model_states.pt").unlink()
    elif how == "foreign object":  # a pickle that would run code if unpickled without weights_only
        torch.save({"module": {}, "x": os.system}, tag / "mp_rank_00_model_states.pt")
    return folder


@pytest.mark.parametrize(
    "how,message",
    [
        ("no latest", "neither config.json nor a DeepSpeed 'latest' file"),
        ("latest names nothing", "incomplete DeepSpeed checkpoint"),
        ("missing shard", "cannot read the DeepSpeed checkpoint"),
        ("truncated shard", "damaged checkpoint"),  # verified before it is read: the shard is named
        ("no model states", "incomplete DeepSpeed checkpoint"),
        ("foreign object", "refused to unpickle a non-tensor object"),
    ],
)
def test_a_broken_folder_is_a_one_line_error(engine_folders, tmp_path, capsys, how, message):
    folder = _broken(engine_folders, tmp_path, how)
    for argv in (
        ["eval", "states", "--checkpoint", str(folder), "--tokenizer", "bytes", "--train-length", "32"],
        ["export", str(folder), str(tmp_path / "out")],
    ):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "out").exists()
