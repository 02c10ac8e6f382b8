"""data.synthetic_passkey_fraction: appendix-B.1 passkey documents (each followed by its answer)
mixed into every row stream, deterministically (exact resume), with keys of their own."""

import itertools

import numpy as np
import pytest
import torch
from stuffed_mamba.data import DataConfig, build_dataloader, load_tokenizer
from stuffed_mamba.data.synthetic import PasskeyMixer, answer_text

from stuffed_mamba.probes.passkey import QUESTION, build_prompt
from tests.data.loaders import same_episodes, stop_and_resume

LENGTHS = [300, 420]  # the bytes tokenizer: the prompt alone is ~250 tokens


def _cfg(corpus, **kw):
    base = dict(source=str(corpus), tokenizer="bytes", min_doc_tokens=300, train_length=64, segments=3,
                batch_size=2, seed=3, tokenize_batch_bytes=2000, synthetic_passkey_fraction=0.4,
                synthetic_passkey_lengths=LENGTHS)  # fmt: skip
    return DataConfig(**{**base, **kw})


def _stream_text(episodes, row):
    """The continuous token stream of one row (windows overlap by one token: drop the repeat)."""
    toks = [episodes[0][row, 0, 0].item()] + [t for ep in episodes for seg in ep[row] for t in seg[1:].tolist()]
    return toks


def test_documents_are_the_probes_prompt_followed_by_the_answer():
    tok = load_tokenizer("bytes")
    mixer = PasskeyMixer(tok, fraction=0.5, lengths=LENGTHS, seed=1, lane=0)
    for i in range(5):
        key, doc = mixer.document(i)
        answer = tok.encode(answer_text(key))
        assert len(doc) <= max(LENGTHS) and len(key) == 5 and key.isdigit()
        assert doc[-len(answer) :].tolist() == answer
        prompt = doc[: -len(answer)].tolist()
        assert tok.decode(prompt).endswith(QUESTION) and f"The passkey is {key}." in tok.decode(prompt)
        depth_free = [build_prompt(tok, n - len(answer), d / 20, key) for n in LENGTHS for d in range(21)]
        assert prompt in depth_free  # the probe's own builder made it
    assert (
        mixer.document(3)[1].tolist()
        == PasskeyMixer(tok, fraction=0.5, lengths=LENGTHS, seed=1, lane=0).document(3)[1].tolist()
    )
    assert mixer.document(3)[0] != PasskeyMixer(tok, fraction=0.5, lengths=LENGTHS, seed=1, lane=1).document(3)[0]


def test_the_stream_carries_the_asked_fraction_of_passkey_tokens(corpus):
    cfg = _cfg(corpus)
    tok = load_tokenizer("bytes")
    eps = list(itertools.islice(build_dataloader(cfg), 40))
    for row in range(cfg.batch_size):
        toks = np.array(_stream_text(eps, row))
        cuts = np.flatnonzero(toks == tok.eos_id)
        docs = [tok.decode(toks[a + 1 : b]) for a, b in zip(cuts[:-1], cuts[1:], strict=True)]  # whole documents only
        synthetic = [d for d in docs if d.startswith("There is important info")]
        assert synthetic and all(d.endswith(".") and d.rstrip(".")[-5:].isdigit() for d in synthetic)
        share = sum(len(d) for d in synthetic) / sum(len(d) for d in docs)
        assert 0.25 < share < 0.55  # 0.4 of the tokens, up to the granularity of whole documents
    off = list(itertools.islice(build_dataloader(_cfg(corpus, synthetic_passkey_fraction=0.0)), 5))
    assert all("passkey" not in tok.decode(_stream_text(off, r)) for r in range(cfg.batch_size))


def test_resume_with_passkey_documents_continues_exactly(corpus):
    cfg = _cfg(corpus)
    r = stop_and_resume(cfg, n=60, k=7)
    assert same_episodes(r.episodes, r.reference)
    other = build_dataloader(_cfg(corpus, synthetic_passkey_fraction=0.0))
    other.load_state_dict(r.state)
    with pytest.raises(ValueError, match="synthetic_passkey_fraction was turned off"):
        next(iter(other))


def test_training_keys_miss_the_probes_keys():
    """The documents draw keys from their own generator (numpy, [seed, lane, i]), never the probe's
    (torch, probes.passkey.seed). Keys are 5-digit, so two independent draws can still meet by chance
    (1 in 90,000 per pair): this checks that the keys a tiny_cpu-sized run would train on (4 lanes,
    250 documents each) miss every key the probe draws with its default seed (24 trials)."""
    tok = load_tokenizer("data/sample/tokenizer.json")
    gen = torch.Generator().manual_seed(0)  # as evaluate_passkey draws them
    probe = {str(int(torch.randint(10000, 100000, (1,), generator=gen))) for _ in range(24)}
    train = set()
    for lane in range(4):
        mixer = PasskeyMixer(tok, fraction=0.5, lengths=[128], seed=DataConfig.synthetic_passkey_seed, lane=lane)
        train |= {mixer.document(i)[0] for i in range(250)}
    assert len(train) > 900 and len(probe) == 24 and not train & probe


@pytest.mark.parametrize("kw,msg", [
    (dict(synthetic_passkey_fraction=1.0), "synthetic_passkey_fraction must be in"),
    (dict(synthetic_passkey_fraction=-0.1), "synthetic_passkey_fraction must be in"),
    (dict(synthetic_passkey_lengths=[]), "synthetic_passkey_lengths must be"),
])  # fmt: skip
def test_bad_settings_are_one_line_errors(corpus, kw, msg):
    with pytest.raises(ValueError, match=msg):
        _cfg(corpus, **kw)


def test_a_length_too_short_for_the_prompt_fails_at_start(corpus):
    with pytest.raises(ValueError, match=r"synthetic_passkey_lengths: 100 tokens: .*too short"):
        build_dataloader(_cfg(corpus, synthetic_passkey_lengths=[100]))
