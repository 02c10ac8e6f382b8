"""Packing: one continuous token stream per batch row, cut into TBPTT episodes.

Documents are joined with EOS (the state is never reset at an EOS: learning to forget the
previous documents is what the training teaches). A row of an episode is S*T+1 consecutive
tokens; segment s is tokens [s*T, s*T+T] (T inputs and their T shifted labels), so segment
s+1 continues segment s, and the next row of the stream starts with the last token of this
one (the last label becomes the next first input: no token is skipped or fed twice as input).
"""

from __future__ import annotations

import numpy as np
import torch


class Packer:
    def __init__(self, eos_id: int, row_tokens: int):
        self.row_tokens = row_tokens
        self._eos = np.array([eos_id], dtype=np.int32)
        self._chunks: list[np.ndarray] = []
        self._n = 0

    def __len__(self) -> int:
        return self._n

    def push(self, tokens: np.ndarray) -> None:
        self._chunks += [tokens, self._eos]
        self._n += len(tokens) + 1

    def pop_row(self) -> np.ndarray | None:
        """The next S*T+1 tokens of the stream (int32), or None if not buffered yet."""
        if self._n < self.row_tokens:
            return None
        buf = np.concatenate(self._chunks) if len(self._chunks) > 1 else self._chunks[0]
        row = buf[: self.row_tokens]
        rest = buf[self.row_tokens - 1 :]  # the last label is the next row's first input
        self._chunks, self._n = [rest], len(rest)
        return row

    def state_dict(self) -> torch.Tensor:
        buf = np.concatenate(self._chunks) if self._chunks else np.zeros(0, dtype=np.int32)
        return torch.from_numpy(buf.astype(np.int32, copy=True))

    def load_state_dict(self, buf: torch.Tensor) -> None:
        arr = buf.numpy().astype(np.int32, copy=True)
        self._chunks, self._n = ([arr] if len(arr) else []), len(arr)


def rows_to_episode(rows: list[np.ndarray], segments: int, train_length: int) -> torch.Tensor:
    """[B] rows of S*T+1 tokens -> LongTensor [B, S, T+1] (input = [..., :-1], labels = [..., 1:])."""
    T = train_length
    windows = [np.lib.stride_tricks.sliding_window_view(r, T + 1)[::T] for r in rows]  # B x [S, T+1]
    ep = torch.from_numpy(np.stack(windows)).long()  # (B, S, T+1)
    assert ep.shape[1] == segments
    return ep
