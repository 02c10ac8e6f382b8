"""Splitting a kernel call whose offsets would pass the 32-bit bound into exact smaller calls.

`plan` is pure arithmetic: given `largest(r, L)`, the largest element offset of a call on r rows
and L tokens (`ops.kernel_offsets`), it cuts the call's [rows, length] block into pieces whose
offsets stay below the bound: first into groups of rows (whole sequences), and only if one row is
still too long, each row into consecutive pieces of L tokens, L a multiple of `align` (the SSD's
chunk size, so that every chunk of the unsplit call is a chunk of one piece).

The executors run the pieces. Rows are independent. Consecutive pieces of one row are chained
through the op contract's states: piece k + 1 starts from piece k's final state, which is exact
(the SSD's final state is the fp32 state its chunk scan passes between chunks; the conv's is the
last k - 1 inputs), and autograd carries the gradient of each final state back into the piece
before it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Piece:
    rows: tuple[int, int]  # [r0, r1)
    tokens: tuple[int, int]  # [t0, t1)


class OffsetError(ValueError):
    pass


def _largest_fitting(fits: Callable[[int], bool], hi: int) -> int:
    """The largest n in [0, hi] with fits(n), for fits monotone (true up to some n, then false)."""
    lo = 0
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if fits(mid):
            lo = mid
        else:
            hi = mid - 1
    return lo


def plan(largest: Callable[[int, int], int], rows: int, length: int, *, bound: int, align: int = 1) -> list[Piece]:
    """Pieces of the [rows, length] call, row-major, each with largest(r, L) < bound.

    Raises OffsetError if even one row of `align` tokens reaches the bound.
    """
    if rows == 0 or length == 0 or largest(rows, length) < bound:
        return [Piece((0, rows), (0, length))]
    r = _largest_fitting(lambda n: largest(n, length) < bound, rows)
    if r >= 1:
        pieces = [Piece((r0, min(r0 + r, rows)), (0, length)) for r0 in range(0, rows, r)]
    else:
        k = _largest_fitting(lambda n: largest(1, n * align) < bound, -(-length // align))
        if k == 0:
            raise OffsetError(
                f"one row of {align} tokens already addresses offset {largest(1, align):,} >= {bound:,}: "
                "the kernels cannot run this call; use a smaller model dimension"
            )
        L = k * align
        pieces = [Piece((i, i + 1), (t0, min(t0 + L, length))) for i in range(rows) for t0 in range(0, length, L)]
    # The bisection assumes largest() monotone; mamba_ssm's SM-dependent head split makes some
    # buffers shrink as calls grow, so check the pieces rather than trust it.
    sizes = {(p.rows[1] - p.rows[0], p.tokens[1] - p.tokens[0]) for p in pieces}
    if any(largest(r, L) >= bound for r, L in sizes):
        raise OffsetError(f"no split of {rows} x {length} keeps every kernel offset below {bound:,}")
    return pieces


def _rows(pieces: list[Piece]) -> list[tuple[tuple[int, int], list[tuple[int, int]]]]:
    """[(row range, [token ranges in order])] in row order."""
    groups: dict[tuple[int, int], list[tuple[int, int]]] = {}
    for p in pieces:
        groups.setdefault(p.rows, []).append(p.tokens)
    return list(groups.items())


def run_chained(
    pieces: list[Piece],
    call: Callable[..., tuple[torch.Tensor, torch.Tensor]],
    seq: dict[str, torch.Tensor],
    initial_state: torch.Tensor | None,
    **fixed,
) -> tuple[torch.Tensor, torch.Tensor]:
    """y, final_state of `call(**seq sliced [rows, tokens], initial_state=h, **fixed) -> (y, h)` over
    the pieces: the tensors of `seq` are [b, T, ...], y is [b, T, ...], the state [b, ...]."""
    if len(pieces) == 1:
        return call(**seq, initial_state=initial_state, **fixed)
    ys, finals = [], []
    for (r0, r1), spans in _rows(pieces):
        h = None if initial_state is None else initial_state[r0:r1]
        parts = []
        for t0, t1 in spans:
            y, h = call(**{k: v[r0:r1, t0:t1] for k, v in seq.items()}, initial_state=h, **fixed)
            parts.append(y)
        ys.append(torch.cat(parts, dim=1))
        finals.append(h)
    return torch.cat(ys, dim=0), torch.cat(finals, dim=0)


def run_rows(pieces: list[Piece], call: Callable[..., torch.Tensor], rowwise: dict[str, torch.Tensor], **fixed):
    """cat over the pieces' row ranges of call(**rowwise sliced to the rows, **fixed)."""
    if len(pieces) == 1:
        return call(**rowwise, **fixed)
    return torch.cat([call(**{k: v[p.rows[0] : p.rows[1]] for k, v in rowwise.items()}, **fixed) for p in pieces])


def describe(config, batch: int, length: int, *, bound: int | None = None) -> str:
    """One line: the largest offset a mixer's kernel calls would form on `batch` rows of `length`
    tokens (on an H100's SM count), and the pieces each call is split into."""
    from stuffed_mamba.ops.kernel_offsets import INT32_MAX, mixer_calls

    bound = INT32_MAX if bound is None else bound
    calls = mixer_calls(config, batch, length)
    worst, parts = 0, []
    for name, c in calls.items():
        worst = max(worst, c.largest(c.rows, c.length))
        try:
            n = len(plan(c.largest, c.rows, c.length, bound=bound, align=c.align))
            parts.append(f"{name} {n} call{'s' if n > 1 else ''}")
        except OffsetError:
            parts.append(f"{name} cannot run")
    return (
        f"largest kernel offset {worst:,} ({worst / bound:.2f} of the 32-bit bound {bound:,}) "
        f"at {batch} x {length:,} tokens; per layer: {', '.join(parts)}"
    )
