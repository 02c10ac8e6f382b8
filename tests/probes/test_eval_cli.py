"""The eval CLI on a checkpoint folder, and its one-line errors."""

import json

import pytest

from stuffed_mamba.cli import main
from stuffed_mamba.cli.eval import parse_length

from .conftest import make_tiny_lm


@pytest.fixture
def folder(tmp_path):
    path = tmp_path / "ckpt"
    make_tiny_lm().save_pretrained(path)
    return path


def test_parse_length():
    assert [parse_length(x) for x in ("4096", "4K", "1M", "0.5K")] == [4096, 4096, 1 << 20, 512]


def test_passkey_on_a_folder_with_interventions(folder, tmp_path, capsys):
    out = tmp_path / "out"
    rc = main(
        [
            "eval",
            "passkey",
            "--checkpoint",
            str(folder),
            "--tokenizer",
            "bytes",
            "--lengths",
            "300",
            "--samples",
            "2",
            "--max-new-tokens",
            "2",
            "--out",
            str(out),
            "--no-progress",
            "--intervention",
            "none",
            "--intervention",
            "window:64",
        ]
    )
    assert rc == 0
    js = json.loads((out / "passkey.json").read_text())
    assert js["intervention"] == "none" and set(js["interventions"]) == {"none", "window:64"}
    assert (out / "passkey_heatmap_none.png").is_file() and (out / "passkey_heatmap_window64.png").is_file()
    assert "intervention: window:64" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv,message",
    [
        (["passkey", "--checkpoint", "/nonexistent.ckpt"], "not found"),
        (["passkey", "--tokenizer", "bytes", "--intervention", "bogus"], "unknown intervention"),
        (["passkey", "--tokenizer", "bytes", "--lengths", "100"], "too short"),
        (["retention", "--tokenizer", "bytes"], "--train-length"),
        (["loss", "--tokenizer", "bytes", "--train-length", "64"], "--data"),
        (["passkey"], "--tokenizer"),
    ],
)
def test_user_errors_are_one_line(folder, tmp_path, capsys, argv, message):
    if "--checkpoint" not in argv:
        argv = argv + ["--checkpoint", str(folder)]
    rc = main(["eval", *argv, "--out", str(tmp_path / "o"), "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and message in err and len(err.splitlines()) == 1, err


def test_a_window_not_shorter_than_the_length_warns(folder, tmp_path, capsys):
    rc = main(
        [
            "eval",
            "states",
            "--checkpoint",
            str(folder),
            "--tokenizer",
            "bytes",
            "--train-length",
            "32",
            "--length",
            "128",
            "--points",
            "4",
            "--out",
            str(tmp_path / "o"),
            "--no-progress",
            "--intervention",
            "window:128",
            "--intervention",
            "window:64",
        ]
    )
    assert rc == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert len(warnings) == 1 and "window:128" in warnings[0] and "equals 'none'" in warnings[0]


def test_default_output_is_beside_the_run(tmp_path, capsys, monkeypatch):
    """A checkpoint of `fit` writes to {run.dir}/eval; a folder (export, hub snapshot) to ./eval."""
    from stuffed_mamba.training.fit import fit
    from tests.training.common import tiny_recipe
    from tests.training.fakes import FakeEpisodeLoader

    run_dir = tmp_path / "run"
    fit(
        tiny_recipe(run_dir, "trainer.max_steps=3"),
        log=lambda s: None,
        loader_factory=lambda r, w: FakeEpisodeLoader(batch_size=2, segments=3, train_length=16, rank=r, world_size=w),
    )
    monkeypatch.chdir(tmp_path)
    rc = main(
        [
            "eval",
            "states",
            "--checkpoint",
            str(run_dir / "checkpoints/last.ckpt"),
            "--length",
            "64",
            "--points",
            "4",
            "--no-progress",
        ]
    )
    assert rc == 0, capsys.readouterr().err
    assert (run_dir / "eval" / "states.json").is_file() and not (tmp_path / "eval").exists()
