"""Parity with HuggingFace transformers' Mamba2ForCausalLM (an independent implementation)."""

import pytest
import torch

from stuffed_mamba.model import Mamba2LM
from tests.helpers import rel_err

transformers = pytest.importorskip("transformers")


def _random_hf_model(ngroups, tie=True):
    from transformers import Mamba2Config, Mamba2ForCausalLM

    hc = Mamba2Config(
        vocab_size=96,
        hidden_size=32,
        num_hidden_layers=2,
        state_size=8,
        head_dim=8,
        num_heads=8,
        expand=2,
        n_groups=ngroups,
        chunk_size=16,
        conv_kernel=4,
        tie_word_embeddings=tie,
        layer_norm_epsilon=1e-5,
    )
    torch.manual_seed(0)
    model = Mamba2ForCausalLM(hc).eval()
    with torch.no_grad():
        for layer in model.backbone.layers:
            layer.mixer.dt_bias.normal_()
            layer.mixer.A_log.uniform_(-1, 2)
            layer.mixer.D.normal_()
            layer.mixer.norm.weight.normal_()
            layer.norm.weight.normal_()
    return model


@pytest.mark.parametrize("ngroups", [1, 2])
def test_logits_match_transformers(tmp_path, ngroups):
    hf = _random_hf_model(ngroups)
    hf.save_pretrained(tmp_path)
    ours = Mamba2LM.from_pretrained(tmp_path)
    ids = torch.randint(0, 96, (2, 45))  # 45: not a multiple of chunk_size=16
    with torch.no_grad():
        assert rel_err(ours(ids).logits, hf(ids).logits) < 1e-4


def test_export_to_hf_loads_in_transformers(tmp_path, tiny_model):
    from transformers import Mamba2ForCausalLM

    tiny_model.save_pretrained(tmp_path, format="hf")
    hf = Mamba2ForCausalLM.from_pretrained(tmp_path).eval()
    ids = torch.randint(0, 100, (2, 37))
    with torch.no_grad():
        ours = tiny_model(ids).logits
        assert rel_err(hf(ids).logits[..., : ours.shape[-1]], ours) < 1e-4
