"""Synthetic passkey documents mixed into a row stream (`data.synthetic_passkey_fraction`).

A tiny model trained on a few hundred thousand tokens of text retrieves no passkey, so its
passkey curves are flat at 0 and say nothing about T_train. This option mixes appendix-B.1
passkey documents (the probe's own prompt builder, data/passkey_prompt.py), each followed by
its answer " KEY.", into the training stream, so that retrieval can be learnt and its length
generalisation watched. It is synthetic training data: a run that uses it says so.

Document i of lane g is drawn from its own generator, numpy's default_rng([seed, g, i]):
a length from `lengths`, a needle depth in [0, 1), a 5-digit key. The passkey probe draws its
keys from a torch generator seeded with `probes.passkey.seed`, a different stream.
A lane inserts documents after its real ones until the synthetic tokens reach
fraction/(1 - fraction) of the real ones; its counters are its whole state, so a resumed
lane inserts exactly the same documents at exactly the same places.
"""

from __future__ import annotations

import numpy as np

from .passkey_prompt import build_prompt


def answer_text(key: str) -> str:
    return f" {key}."


class PasskeyMixer:
    def __init__(self, tokenizer, *, fraction: float, lengths: list[int], seed: int, lane: int):
        if not 0.0 < fraction < 1.0:
            raise ValueError(f"fraction must be in (0, 1), got {fraction}")
        self.tokenizer, self.lengths, self.seed, self.lane = tokenizer, [int(n) for n in lengths], seed, lane
        self.ratio = fraction / (1.0 - fraction)
        self.real_tokens = 0  # tokens of the lane's real documents so far
        self.docs = 0  # synthetic documents inserted so far (the index of the next one)
        self.tokens = 0  # their tokens

    def document(self, i: int, length: int | None = None) -> tuple[str, np.ndarray]:
        """(key, int32 tokens) of synthetic document i: prompt of at most length - len(answer) tokens, then the
        answer. `length` replaces the drawn one (the depth and key stay document i's): a check of each length."""
        rng = np.random.default_rng([self.seed, self.lane, i])
        drawn = self.lengths[int(rng.integers(len(self.lengths)))]
        length = drawn if length is None else length
        depth = float(rng.random())
        key = str(int(rng.integers(10000, 100000)))
        answer = self.tokenizer.encode(answer_text(key))
        ids = build_prompt(self.tokenizer, length - len(answer), depth, key) + answer
        return key, np.asarray(ids, dtype=np.int32)

    def after(self, real_tokens: int) -> list[np.ndarray]:
        """The synthetic documents that follow a real document of `real_tokens` tokens."""
        self.real_tokens += real_tokens
        out = []
        while self.tokens < self.ratio * self.real_tokens:
            _, doc = self.document(self.docs)
            out.append(doc)
            self.docs += 1
            self.tokens += len(doc)
        return out

    def state_dict(self) -> dict:
        return {"real_tokens": self.real_tokens, "docs": self.docs, "tokens": self.tokens}

    def load_state_dict(self, sd: dict) -> None:
        self.real_tokens, self.docs, self.tokens = int(sd["real_tokens"]), int(sd["docs"]), int(sd["tokens"])
