import re

import pytest
import torch

from stuffed_mamba.probes import passkey as pk
from stuffed_mamba.probes.passkey import (
    PasskeyResult,
    PasskeyTrial,
    build_prompt,
    evaluate_passkey,
    greedy_continuation,
    make_prompt,
)

# Appendix B.1, typed from the paper (the PDF's in-paragraph line breaks are its page wrapping)
PAPER_INSTRUCTION = "There is important info hidden inside a lot of irrelevant text. Find it and memorize it."
PAPER_FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
PAPER_QUESTION = "What is the passkey? The passkey is"


def paper_needle(k):
    return f"The passkey is {k}. Remember it. {k} is the passkey."


@pytest.mark.parametrize("tok_name", ["byte_tok", "bpe_tok"])
@pytest.mark.parametrize("T", [400, 1000, 3000])
@pytest.mark.parametrize("depth", [0.0, 0.25, 0.5, 0.75])
def test_prompt_is_appendix_b1_within_budget_needle_at_depth(request, tok_name, T, depth):
    tok = request.getfixturevalue(tok_name)
    key = "34847"
    ids = build_prompt(tok, T, depth, key)
    assert len(ids) <= T
    paragraphs = tok.decode(ids).split("\n\n")
    assert paragraphs[0] == PAPER_INSTRUCTION
    assert paragraphs[-1] == PAPER_QUESTION
    body = paragraphs[1:-1]
    assert body.count(paper_needle(key)) == 1 and sum(key in p for p in paragraphs) == 1
    fillers = [p for p in body if p != paper_needle(key)]
    assert fillers and all(p == PAPER_FILLER for p in fillers)
    n = len(fillers)
    # the needle sits after round(depth * n) of the n filler paragraphs
    assert body.index(paper_needle(key)) == round(depth * n)
    # the largest such prompt: one more filler paragraph would not fit
    one_more = tok.encode(
        "\n\n".join([PAPER_INSTRUCTION, *[PAPER_FILLER] * (n + 1), paper_needle(key), PAPER_QUESTION])
    )
    assert len(one_more) > T


@pytest.mark.parametrize("depth", [0.0, 0.2, 0.4, 0.6, 0.8])
def test_needle_token_position_is_paper_position(byte_tok, depth):
    """The i-th of n needles sits near token T*i/n - 1 (appendix B.1), within one filler paragraph."""
    T = 8192
    p = make_prompt(byte_tok, T, depth, "12345")
    per_paragraph = len(byte_tok.encode(PAPER_FILLER + "\n\n"))
    instruction = len(byte_tok.encode(PAPER_INSTRUCTION + "\n\n"))
    assert abs(p.needle_start - (T * depth - 1)) <= per_paragraph + instruction
    # and exactly where the decoded text puts it
    assert byte_tok.decode(p.ids[p.needle_start :]).startswith(paper_needle("12345"))


def test_prompt_rejects_bad_input(byte_tok):
    with pytest.raises(ValueError, match="too short"):
        build_prompt(byte_tok, 100, 0.5, "12345")
    with pytest.raises(ValueError, match="5-digit"):
        build_prompt(byte_tok, 1000, 0.5, "1234")
    with pytest.raises(ValueError, match="depth"):
        build_prompt(byte_tok, 1000, 1.5, "12345")


def _naive_greedy(model, ids, n):
    """Reference: re-run the whole sequence through forward() for every new token."""
    seq = list(ids)
    out = []
    for _ in range(n):
        logits = model(torch.tensor([seq])).logits[0, -1, : model.config.vocab_size]
        out.append(int(logits.argmax()))
        seq.append(out[-1])
    return out


@pytest.mark.parametrize("chunk", [7, 64, 1000])
def test_greedy_continuation_matches_full_forward(tiny_lm, chunk):
    ids = torch.randint(0, 256, (150,), generator=torch.Generator().manual_seed(1)).tolist()
    with torch.no_grad():
        ref = _naive_greedy(tiny_lm, ids, 6)
    assert greedy_continuation(tiny_lm, ids, max_new_tokens=6, prefill_chunk=chunk) == ref


def test_evaluate_passkey_bookkeeping(byte_tok, tiny_lm, monkeypatch):
    """A stand-in decoder that knows the key only when the needle is in the second half: the
    accuracy per depth, per last-r and T_recall follow exactly."""

    def fake_continuation(model, ids, **kw):
        text = byte_tok.decode(ids)
        key = re.search(r"The passkey is (\d{5})\.", text).group(1)
        pos = text.index("The passkey is ")
        return byte_tok.encode(f" {key}." if pos > len(text) / 2 else " 00000.")

    monkeypatch.setattr(pk, "greedy_continuation", fake_continuation)
    seen = []
    res = evaluate_passkey(
        tiny_lm, byte_tok, [1024, 2048], samples=4, generator=torch.Generator().manual_seed(3), progress=seen.append
    )
    assert len(res.trials) == len(seen) == 8 and res.complete
    acc = res.accuracy()
    assert list(acc) == [1024, 2048]
    for T in acc:
        assert acc[T] == {0.0: 0.0, 0.25: 0.0, 0.5: 0.0, 0.75: 1.0}  # depth 0.5 sits just before the middle
    assert res.accuracy_by_length() == {1024: 0.25, 2048: 0.25}
    assert res.t_recall() == 0
    assert res.last_r_accuracy(300) == 1.0  # only the depth-0.75 needles of 1K lie in the last 300 tokens
    assert all(len(t.passkey) == 5 and t.passkey.isdigit() for t in res.trials)
    # the probe's generator alone decides the keys
    again = evaluate_passkey(tiny_lm, byte_tok, [1024, 2048], samples=4, generator=torch.Generator().manual_seed(3))
    assert [t.passkey for t in again.trials] == [t.passkey for t in res.trials]


def test_evaluate_passkey_real_model_and_deadline(byte_tok, tiny_lm):
    res = evaluate_passkey(tiny_lm, byte_tok, [512], samples=2, max_new_tokens=3, prefill_chunk=128)
    assert [t.depth for t in res.trials] == [0.0, 0.5]
    assert all(t.correct == (t.passkey in t.answer) for t in res.trials)
    late = evaluate_passkey(tiny_lm, byte_tok, [512], samples=2, deadline=0.0)
    assert not late.complete and late.trials == []


def test_t_recall_is_longest_length_at_95_percent():
    def trials(T, hits, n=20):
        return [PasskeyTrial(T, i / n, "12345", T, 0, "", i < hits) for i in range(n)]

    res = PasskeyResult(
        [1024, 2048, 4096, 8192], 20, trials(1024, 20) + trials(2048, 19) + trials(4096, 18) + trials(8192, 0)
    )
    assert res.accuracy_by_length() == {1024: 1.0, 2048: 0.95, 4096: 0.9, 8192: 0.0}
    assert res.t_recall() == 2048
    js = res.to_json(last_r=[1024])
    assert js["T_recall"] == 2048 and js["accuracy_by_length"]["4096"] == 0.9
