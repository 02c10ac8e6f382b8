import json

import pytest
import torch

from stuffed_mamba.model import Mamba2LM
from tests.model.conftest import tiny_config


def _official_folder(tmp_path, model, fmt):
    (tmp_path / "config.json").write_text(json.dumps(model.config.to_mamba_ssm()))
    sd = model.state_dict()
    if fmt == "bin":
        torch.save(sd, tmp_path / "pytorch_model.bin")  # mamba_ssm's own save: both tied keys present
    else:
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in sd.items() if k != "lm_head.weight"}, tmp_path / "model.safetensors")
    return tmp_path


@pytest.mark.parametrize("fmt", ["bin", "safetensors"])
def test_official_folder_round_trip_is_bit_exact(tmp_path, tiny_model, fmt):
    loaded = Mamba2LM.from_pretrained(_official_folder(tmp_path, tiny_model, fmt))
    for (k, a), (k2, b) in zip(tiny_model.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert k == k2 and torch.equal(a, b), k
    assert loaded.lm_head.weight is loaded.backbone.embedding.weight


def test_save_pretrained_mamba_ssm_round_trip(tmp_path, tiny_model):
    tiny_model.save_pretrained(tmp_path)
    loaded = Mamba2LM.from_pretrained(tmp_path)
    ids = torch.randint(0, 100, (1, 20))
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, tiny_model(ids).logits)


def test_missing_and_unexpected_keys_are_named(tmp_path, tiny_model):
    folder = _official_folder(tmp_path, tiny_model, "bin")
    sd = torch.load(folder / "pytorch_model.bin", weights_only=True)
    del sd["backbone.layers.1.mixer.D"]
    sd["backbone.layers.1.mixer.extra"] = torch.zeros(1)
    torch.save(sd, folder / "pytorch_model.bin")
    with pytest.raises(
        ValueError,
        match=r"missing keys \['backbone.layers.1.mixer.D'\].*unexpected keys \['backbone.layers.1.mixer.extra'\]",
    ):
        Mamba2LM.from_pretrained(folder)


def test_pickled_code_is_refused(tmp_path, tiny_model):
    """weights_only=True: a .bin that smuggles an arbitrary object does not load."""
    folder = _official_folder(tmp_path, tiny_model, "bin")
    sd = dict(tiny_model.state_dict())
    sd["evil"] = torch.nn.Linear(1, 1)  # a module, not a tensor
    torch.save(sd, folder / "pytorch_model.bin")
    with pytest.raises(Exception, match="(?i)weights_only|unsupported|global"):
        Mamba2LM.from_pretrained(folder)


def test_not_a_checkpoint_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="no config.json"):
        Mamba2LM.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(tiny_config().to_mamba_ssm()))
    with pytest.raises(FileNotFoundError, match="no weights"):
        Mamba2LM.from_pretrained(tmp_path)
