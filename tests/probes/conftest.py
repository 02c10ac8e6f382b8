"""Tiny models and tokenizers for the probe tests (fast on 2 CPU cores)."""

import pytest
import torch

from stuffed_mamba.model import Mamba2Config, Mamba2LM
from tests import helpers


class ByteTok:
    """The project's byte tokenizer interface (256 bytes + EOS), independent of the data package."""

    eos_id = 256
    vocab_size = 257

    def encode(self, text):
        return list(text.encode("utf-8"))

    def decode(self, ids):
        return bytes(int(i) for i in ids if 0 <= int(i) < 256).decode("utf-8", errors="replace")


class BPETok:
    """A real byte-level BPE (merges across words and newlines), trained here on prompt-like text."""

    def __init__(self):
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=400, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
        )
        from stuffed_mamba.probes.passkey import prompt_text

        corpus = [prompt_text(3, 2, f"{k:05d}") for k in range(10000, 10400, 7)]
        tok.train_from_iterator(corpus, trainer)
        self._tok = tok
        self.eos_id = tok.token_to_id("<|endoftext|>")
        self.vocab_size = tok.get_vocab_size()

    def encode(self, text):
        return self._tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids):
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=False)


@pytest.fixture(scope="session")
def byte_tok():
    return ByteTok()


@pytest.fixture(scope="session")
def bpe_tok():
    return BPETok()


def tiny_config(**kw) -> Mamba2Config:
    """The kit's tiny model over the byte vocabulary, with smaller heads (fast probes)."""
    return helpers.tiny_config(**{"vocab_size": 257, "d_state": 8, "headdim": 8, **kw})


def make_tiny_lm(seed: int = 0, **kw) -> Mamba2LM:
    """A tiny LM with non-default Delta and A (the defaults would hide mistakes in their use)."""
    torch.manual_seed(seed)
    model = Mamba2LM(tiny_config(**kw))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for block in model.backbone.layers:
            m = block.mixer
            m.dt_bias.copy_(torch.randn(m.dt_bias.shape, generator=g) - 2)
            m.A_log.copy_(torch.rand(m.A_log.shape, generator=g) * 2 - 1)
    return model.eval()


@pytest.fixture
def tiny_lm():
    return make_tiny_lm()
