"""An `eval` replaces the outputs of an earlier eval of the same probe in its folder: the files the
new run does not rewrite (a figure per intervention where there was one figure, or the reverse)
are removed; another probe's files and the user's own stay (issue 22)."""

import json

from stuffed_mamba.cli import main

from .conftest import make_tiny_lm


def _passkey(folder, out, *interventions):
    argv = ["eval", "passkey", "--checkpoint", str(folder), "--tokenizer", "bytes", "--lengths", "300"]
    argv += ["--samples", "1", "--max-new-tokens", "2", "--out", str(out), "--no-progress"]
    for spec in interventions:
        argv += ["--intervention", spec]
    assert main(argv) == 0


def test_a_rerun_replaces_the_earlier_eval_of_the_same_probe(tmp_path, capsys):
    folder = tmp_path / "ckpt"
    make_tiny_lm().save_pretrained(folder)
    out = tmp_path / "out"
    _passkey(folder, out)
    first = {p.name for p in out.iterdir()}
    assert {"passkey.json", "passkey.txt", "passkey_heatmap.png"} <= first
    # files the passkey eval does not own: another probe's outputs and the user's notes
    others = {"loss.json": "{}", "loss_curve.png": "png", "notes.txt": "mine", "passkey notes.md": "mine"}
    for name, text in others.items():
        (out / name).write_text(text)

    _passkey(folder, out, "none", "window:64")
    second = {p.name for p in out.iterdir()}
    assert "passkey_heatmap.png" not in second
    assert {"passkey_heatmap_none.png", "passkey_heatmap_window64.png"} <= second
    assert "removed the earlier eval's passkey_heatmap.png" in capsys.readouterr().out
    written = json.loads((out / "passkey.json").read_text())["files"]
    assert set(written) == {p for p in second if p.startswith("passkey") and p != "passkey notes.md"}

    # what a third eval would remove: exactly the second one's files, not the others' nor the user's
    from stuffed_mamba.cli.eval import _earlier_outputs

    assert _earlier_outputs(out, "passkey") == set(written)
    assert all((out / name).read_text() == text for name, text in others.items())
