"""One way to read a checkpoint (issue 20, acceptance 1): `torch.load` and the parsing of `config.json`
happen in `model/io.py` (and the DeepSpeed reader it uses) only, and eval, export, the probes' loader
and doctor read the same checkpoints through it: a Lightning file of `fit`'s layout, an official
mamba_ssm folder, a transformers folder written by transformers itself, and a hub name from the
HuggingFace cache. DeepSpeed ZeRO-2/3 folders: tests/training/test_deepspeed_checkpoints.py."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
import torch

import stuffed_mamba.model.folder as folder
import stuffed_mamba.model.io as io
from stuffed_mamba.cli import main
from stuffed_mamba.model import Mamba2LM
from tests.model.conftest import randomise_ssm_params, tiny_config

ROOT = Path(__file__).resolve().parents[2]
# io and the two format readers it uses (official/transformers folders, DeepSpeed folders)
READERS_OF_CHECKPOINTS = {
    "src/stuffed_mamba/model/io.py",
    "src/stuffed_mamba/model/folder.py",
    "src/stuffed_mamba/model/deepspeed_checkpoint.py",
}
# the field mapping is Mamba2Config.from_mamba_ssm / from_hf (contract); folder.py reads the files
CONFIG_PARSER = {"src/stuffed_mamba/model/config.py", "src/stuffed_mamba/model/folder.py"}
# keys only an official (mamba_ssm) or transformers config.json has: reading one of them is parsing it
CONFIG_JSON_KEYS = {"hidden_size", "num_hidden_layers", "ssm_cfg", "d_intermediate", "attn_layer_idx", "n_groups"}
SHA = "0123456789abcdef0123456789abcdef01234567"


def _sources():
    for top in ("src", "data", "callbacks"):
        for f in sorted((ROOT / top).rglob("*.py")):
            yield f.relative_to(ROOT).as_posix(), ast.parse(f.read_text(), filename=str(f))


def _torch_loads(tree) -> list[int]:
    """Lines calling torch.load / torch.serialization.load, or a `load` imported from torch."""
    from_torch = {
        a.asname or a.name
        for n in ast.walk(tree)
        if isinstance(n, ast.ImportFrom) and n.module in ("torch", "torch.serialization")
        for a in n.names
        if a.name == "load"
    }
    lines = []
    for n in ast.walk(tree):
        if isinstance(n, ast.Call):
            fn = ast.unparse(n.func)
            if fn in ("torch.load", "torch.serialization.load") or fn in from_torch:
                lines.append(n.lineno)
    return lines


def _config_json_reads(tree) -> list[int]:
    """Lines that read an official/transformers config key (`raw["hidden_size"]`, `.get("ssm_cfg")`,
    `"hidden_size" in raw`), or json-load in a module that names "config.json"."""
    names_file = any(isinstance(n, ast.Constant) and n.value == "config.json" for n in ast.walk(tree))
    lines = []
    for n in ast.walk(tree):
        key = None
        if isinstance(n, ast.Subscript) and isinstance(n.slice, ast.Constant):
            key = n.slice.value
        elif isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.args:
            if n.func.attr == "get" and isinstance(n.args[0], ast.Constant):
                key = n.args[0].value
            elif names_file and ast.unparse(n.func) in ("json.load", "json.loads"):
                lines.append(n.lineno)
        elif isinstance(n, ast.Compare) and isinstance(n.left, ast.Constant) and isinstance(n.ops[0], ast.In):
            key = n.left.value
        if key in CONFIG_JSON_KEYS:
            lines.append(n.lineno)
    return lines


def test_torch_load_and_config_json_parsing_live_in_model_io_only():
    loads, parses, scanned = {}, {}, 0
    for name, tree in _sources():
        scanned += 1
        if lines := _torch_loads(tree):
            loads[name] = lines
        if lines := _config_json_reads(tree):
            parses[name] = lines
    assert scanned > 50  # the scan saw the tree
    assert set(loads) <= READERS_OF_CHECKPOINTS, {k: v for k, v in loads.items() if k not in READERS_OF_CHECKPOINTS}
    assert set(parses) <= CONFIG_PARSER, {k: v for k, v in parses.items() if k not in CONFIG_PARSER}
    assert set(loads) == READERS_OF_CHECKPOINTS and set(parses) == CONFIG_PARSER  # the scan finds what is there


def test_the_scan_sees_what_it_looks_for():
    code = (
        "import json, torch\nfrom torch import load as L\n"
        "torch.load(p)\nL(p)\ncfg = json.loads(open('config.json').read())\ncfg['hidden_size']\n"
        "cfg.get('ssm_cfg')\n'n_groups' in cfg\n"
    )
    tree = ast.parse(code)
    assert _torch_loads(tree) == [3, 4]
    assert sorted(_config_json_reads(tree)) == [5, 6, 7, 8]
    # writing a config (a dict literal's keys) is not parsing one
    assert _config_json_reads(ast.parse("c = {'hidden_size': 1, 'ssm_cfg': {}}\n")) == []


# ---------------------------------------------------------------------------- the same checkpoints


def _official(model, folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(model.config.to_mamba_ssm()))
    torch.save(model.state_dict(), folder / "pytorch_model.bin")  # mamba_ssm's own save: both tied keys
    return folder


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """{kind: (path or hub name, reference state dict in our keys, step)}."""
    root = tmp_path_factory.mktemp("io")
    torch.manual_seed(0)
    ours = randomise_ssm_params(Mamba2LM(tiny_config(vocab_size=260)))
    ref = {k: v.clone() for k, v in ours.state_dict().items()}
    out = {}

    # fit's layout: {run.dir}/checkpoints/last.ckpt with the network under `model.`, recipe beside and inside
    run = root / "run"
    (run / "checkpoints").mkdir(parents=True)
    recipe = {"data": {"tokenizer": "bytes", "train_length": 32}}
    (run / "recipe.yaml").write_text("data:\n  tokenizer: bytes\n  train_length: 32\n")
    ckpt = {
        "state_dict": {"model." + k: v for k, v in ref.items()},
        "mamba2_config": ours.config.to_dict(),
        "global_step": 7,
        "recipe": recipe,
    }
    torch.save(ckpt, run / "checkpoints" / "last.ckpt")
    out["lightning file"] = (str(run / "checkpoints" / "last.ckpt"), ref, 7)

    out["official folder"] = (str(_official(ours, root / "official")), ref, None)

    # written by transformers itself: the reference is its own state dict, in our key names
    from transformers import Mamba2Config as HFConfig
    from transformers import Mamba2ForCausalLM

    torch.manual_seed(1)
    hf_cfg = dict(hidden_size=32, num_hidden_layers=2, state_size=16, head_dim=16, num_heads=4, n_groups=1)
    hf = Mamba2ForCausalLM(HFConfig(**hf_cfg, expand=2, vocab_size=260, conv_kernel=4, chunk_size=16))
    hf.save_pretrained(root / "transformers")
    hf_ref = {k.replace("backbone.embeddings.", "backbone.embedding."): v for k, v in hf.state_dict().items()}
    out["transformers folder"] = (str(root / "transformers"), hf_ref, None)

    # a hub name: an HF cache holding tiny/mamba2-io at SHA
    repo = root / "hf_cache" / "models--tiny--mamba2-io"
    _official(ours, repo / "snapshots" / SHA)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(SHA)
    out["hub name"] = ("tiny/mamba2-io", ref, None)
    return out, root / "hf_cache"


@pytest.fixture
def spy(checkpoints, monkeypatch):
    """Every model io.load_checkpoint hands out; the HF cache of `checkpoints`, offline."""
    import huggingface_hub.constants as hub_constants

    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(checkpoints[1]))
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    given = []
    real = io.load_checkpoint

    def recording(*args, **kwargs):
        given.append(real(*args, **kwargs))
        return given[-1]

    monkeypatch.setattr(io, "load_checkpoint", recording)
    return given


def _eval(path, out):
    argv = ["eval", "states", "--checkpoint", path, "--tokenizer", "bytes", "--train-length", "32"]
    assert main([*argv, "--length", "64", "--points", "2", "--out", str(out), "--no-progress", "--device", "cpu"]) == 0
    return json.loads((out / "states.json").read_text())["step"]


def _export(path, out):
    from stuffed_mamba.training.export import export

    export(path, out)
    return torch.load(out / "pytorch_model.bin", weights_only=True)  # what mamba_ssm reads


def _doctor(path, _out):
    from stuffed_mamba.training.doctor.tiny_fit import _eval_read

    return _eval_read(Path(path))[0]


KINDS = ["lightning file", "official folder", "transformers folder", "hub name"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("reader", ["probes", "eval", "export", "doctor"])
def test_every_reader_reads_every_checkpoint_through_io(checkpoints, spy, tmp_path, kind, reader):
    path, ref, step = checkpoints[0][kind]
    if reader == "probes":  # what the probes, the callbacks' evaluations and the sweep call
        got = io.load_checkpoint(path)
        assert got.step == step and not got.model.training
    elif reader == "eval":
        assert _eval(path, tmp_path / "out") == step
    elif reader == "export":
        exported = _export(path, tmp_path / "out")
        assert set(exported) == set(ref)
        for k, v in ref.items():
            assert torch.equal(exported[k], v), k
    else:
        assert _doctor(path, tmp_path) == step
    assert len(spy) == 1, "read once, through model.io.load_checkpoint"
    sd = spy[0].model.state_dict()
    assert set(sd) == set(ref)
    for k, v in ref.items():
        assert torch.equal(sd[k], v), k
    assert spy[0].kind == ("lightning" if kind == "lightning file" else "folder")
    if kind == "hub name":  # found in the (offline) HuggingFace cache
        assert spy[0].path.endswith(f"models--tiny--mamba2-io/snapshots/{SHA}")


def test_the_recipe_and_step_come_with_a_training_checkpoint(checkpoints):
    path, _, _ = checkpoints[0]["lightning file"]
    loaded = io.load_checkpoint(path)
    assert loaded.recipe == {"data": {"tokenizer": "bytes", "train_length": 32}} and loaded.step == 7
    raw = io.read_checkpoint_dict(path)  # what a resume reads: the dict, tensors memory-mapped
    assert raw["global_step"] == 7 and raw["mamba2_config"]["d_model"] == 32


# ---------------------------------------------------------------------------- strict, verified


def _lightning(tmp_path, edit) -> Path:
    torch.manual_seed(0)
    model = Mamba2LM(tiny_config())
    sd = {"model." + k: v for k, v in model.state_dict().items()}
    edit(sd)
    path = tmp_path / "x.ckpt"
    torch.save({"state_dict": sd, "mamba2_config": model.config.to_dict(), "global_step": 1}, path)
    return path


def test_missing_and_unexpected_keys_are_one_line_naming_them(tmp_path):
    def edit(sd):
        del sd["model.backbone.layers.1.mixer.D"]
        sd["model.backbone.layers.1.mixer.extra"] = torch.zeros(1)

    with pytest.raises(ValueError) as e:
        io.load_checkpoint(_lightning(tmp_path, edit))
    msg = str(e.value)
    assert len(msg.splitlines()) == 1
    assert (
        "missing keys ['backbone.layers.1.mixer.D']" in msg
        and "unexpected keys ['backbone.layers.1.mixer.extra']" in msg
    )


def test_a_damaged_file_is_refused_before_it_is_read(tmp_path, capsys):
    path = _lightning(tmp_path, lambda sd: None)
    data = bytearray(path.read_bytes())
    mid = len(data) // 2
    data[mid : mid + 64] = bytes(64)  # zeros inside a tensor: torch.load alone would not notice
    path.write_bytes(bytes(data))
    from stuffed_mamba.model.integrity import CheckpointDamaged

    with pytest.raises(CheckpointDamaged):
        io.load_checkpoint(path)
    argv = ["eval", "states", "--checkpoint", str(path), "--tokenizer", "bytes", "--train-length", "32"]
    assert main([*argv, "--out", str(tmp_path / "o"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "damaged" in err and str(path) in err


def test_one_parser_for_both_config_formats(checkpoints):
    root = Path(checkpoints[1]).parent
    hf = folder.read_config(root / "transformers")
    assert (hf.d_model, hf.n_layer, hf.d_state, hf.headdim, hf.nheads, hf.vocab_size_padded) == (32, 2, 16, 16, 4, 260)
    official = folder.read_config(root / "official" / "config.json")
    assert official == tiny_config(vocab_size=260)
    with pytest.raises(ValueError, match="neither a mamba_ssm config"):
        folder.config_from_json({"n_embd": 8})
