"""The passkey prompt of appendix B.1: one builder for the passkey probe and for the synthetic
passkey documents that `data.synthetic_passkey` mixes into training (so both are the same text).
It lives in data because probes import data, never the reverse (the layering of pyproject.toml).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# Appendix B.1. Inside a paragraph the paper's line breaks are its page wrapping (at ~63
# characters: "Here we / go." breaks mid-sentence), so sentences of a paragraph are joined by
# spaces; the blank lines between paragraphs are kept as "\n\n".
INSTRUCTION = "There is important info hidden inside a lot of irrelevant text. Find it and memorize it."
FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
NEEDLE = "The passkey is {passkey}. Remember it. {passkey} is the passkey."
QUESTION = "What is the passkey? The passkey is"
SEPARATOR = "\n\n"


def prompt_text(n_before: int, n_after: int, passkey: str) -> str:
    """Appendix B.1 with `n_before` filler paragraphs before the needle and `n_after` after it."""
    parts = [INSTRUCTION, *[FILLER] * n_before, NEEDLE.format(passkey=passkey), *[FILLER] * n_after, QUESTION]
    return SEPARATOR.join(parts)


def _check_passkey(passkey: str) -> None:
    if not (isinstance(passkey, str) and len(passkey) == 5 and passkey.isdigit()):
        raise ValueError(f"passkey must be a 5-digit string, got {passkey!r}")


@dataclass
class PasskeyPrompt:
    ids: list[int]  # the prompt's token ids, len <= context_length
    needle_start: int  # token index where the needle paragraph begins
    n_filler: int  # filler paragraphs in total
    n_before: int  # of which before the needle


def make_prompt(tokenizer, context_length: int, depth: float, passkey: str) -> PasskeyPrompt:
    """The largest appendix-B.1 prompt within `context_length` tokens, needle at `depth` of the filler.

    Whole-text tokenization (what a user of the model would feed it); the number of filler
    paragraphs starts from a per-paragraph token estimate and is corrected until the prompt
    fits and one more paragraph would not.
    """
    _check_passkey(passkey)
    if not 0.0 <= depth <= 1.0:
        raise ValueError(f"depth must be in [0, 1], got {depth}")
    T = int(context_length)
    fixed = len(tokenizer.encode(prompt_text(0, 0, passkey)))
    if fixed > T:
        raise ValueError(f"context_length {T} is too short for the passkey prompt ({fixed} tokens without filler)")
    per_filler = max(1, len(tokenizer.encode(prompt_text(1, 0, passkey))) - fixed)

    def encode(n: int) -> list[int]:
        n_before = round(depth * n)
        return tokenizer.encode(prompt_text(n_before, n - n_before, passkey))

    n = (T - fixed) // per_filler
    ids = encode(n)
    while len(ids) > T and n > 0:  # BPE merges across paragraphs can make the estimate short
        n -= max(1, math.ceil((len(ids) - T) / per_filler))
        n = max(n, 0)
        ids = encode(n)
    while True:  # ...or long: add paragraphs while the next one still fits
        more = encode(n + 1)
        if len(more) > T:
            break
        n, ids = n + 1, more
    n_before = round(depth * n)
    needle_start = len(tokenizer.encode(SEPARATOR.join([INSTRUCTION, *[FILLER] * n_before]) + SEPARATOR))
    return PasskeyPrompt(ids=ids, needle_start=needle_start, n_filler=n, n_before=n_before)


def build_prompt(tokenizer, context_length: int, depth: float, passkey: str) -> list[int]:
    """(contract) The prompt's token ids, at most `context_length` long, the needle at fraction
    `depth` (0..1) of the filler; `passkey` a 5-digit string."""
    return make_prompt(tokenizer, context_length, depth, passkey).ids
