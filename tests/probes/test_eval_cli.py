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
    rc = main(["eval", "passkey", "--checkpoint", str(folder), "--tokenizer", "bytes", "--lengths", "300",
               "--samples", "2", "--max-new-tokens", "2", "--out", str(out), "--no-progress",
               "--intervention", "none", "--intervention", "window:64"])
    assert rc == 0
    js = json.loads((out / "passkey.json").read_text())
    assert js["intervention"] == "none" and set(js["interventions"]) == {"none", "window:64"}
    assert (out / "passkey_heatmap_none.png").is_file() and (out / "passkey_heatmap_window64.png").is_file()
    assert "intervention: window:64" in capsys.readouterr().out


@pytest.mark.parametrize("argv,message", [
    (["passkey", "--checkpoint", "/nonexistent.ckpt"], "not found"),
    (["passkey", "--tokenizer", "bytes", "--intervention", "bogus"], "unknown intervention"),
    (["passkey", "--tokenizer", "bytes", "--lengths", "100"], "too short"),
    (["retention", "--tokenizer", "bytes"], "--train-length"),
    (["loss", "--tokenizer", "bytes", "--train-length", "64"], "--data"),
    (["passkey"], "--tokenizer"),
])
def test_user_errors_are_one_line(folder, tmp_path, capsys, argv, message):
    if "--checkpoint" not in argv:
        argv = argv + ["--checkpoint", str(folder)]
    rc = main(["eval", *argv, "--out", str(tmp_path / "o"), "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and message in err and len(err.splitlines()) == 1, err
