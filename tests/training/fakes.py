"""A tiny stand-in for the episode pipeline: deterministic, resumable, rank-aware, with structure to learn."""

from __future__ import annotations

import torch


class FakeEpisodeLoader:
    """Episodes [B, S, T+1]: each row is a continuous stream that repeats a random period-`period`
    pattern (learnable: after one period the next token is determined), restarted every
    `restart_every` tokens. Episode i of rank r is a pure function of (seed, r, i); the state
    is the next episode index, so a resume continues exactly."""

    def __init__(
        self,
        *,
        batch_size=2,
        segments=3,
        train_length=16,
        vocab=32,
        period=5,
        seed=0,
        rank=0,
        world_size=1,
        length=None,
    ):
        self.B, self.S, self.T = batch_size, segments, train_length
        self.vocab, self.period, self.seed = vocab, period, seed
        self.rank, self.world_size = rank, world_size
        self.length = length  # episodes per pass; None = endless
        self.next_index = 0
        self.served: list[int] = []  # global episode ids handed out (rank-disjoint)

    def episode(self, i: int) -> torch.Tensor:
        gid = i * self.world_size + self.rank  # disjoint across ranks
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + gid)
        n = self.S * self.T + 1
        pattern = torch.randint(0, self.vocab, (self.B, self.period), generator=g)
        reps = -(-n // self.period)
        return pattern.repeat(1, reps)[:, :n].reshape(self.B, n).contiguous(), gid

    def __iter__(self):
        while self.length is None or self.next_index < self.length:
            flat, gid = self.episode(self.next_index)
            self.next_index += 1
            self.served.append(gid)
            last = flat[:, -1:]
            body = flat[:, :-1].reshape(self.B, self.S, self.T)
            # labels of segment s end with the first token of segment s+1: keep T+1 per segment
            nxt = torch.cat([body[:, 1:, :1], last[:, None, :]], dim=1)
            yield torch.cat([body, nxt], dim=2)  # [B, S, T+1]

    def counters(self):
        return {"episodes": self.next_index}

    def state_dict(self):
        return {"next_index": self.next_index}

    def load_state_dict(self, state):
        self.next_index = state["next_index"]
