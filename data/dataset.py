"""Episodes [B, S, T+1] from disjoint row streams, one per batch row of every (rank, worker).

Row streams ("lanes") are global: with world_size R, W = max(1, num_workers) workers and B
rows there are L = R*W*B lanes, and lane g = (rank*W + worker)*B + b owns shards i with
i % L == g (of the shard list, seeded-shuffled once). A lane's tokens depend on its shards
only, never on which process reads it, so shards are split disjointly over (rank, worker),
and a resumed lane continues bit-exactly. Shards are RedPajama-V2 shards or the shards of
an hf:// dataset (documents.py); nothing here depends on which.
"""

from __future__ import annotations

import hashlib

import numpy as np
from torch.utils.data import IterableDataset, get_worker_info

from . import counters as ctr
from .documents import open_documents
from .packer import Packer, rows_to_episode
from .stream import DocumentStream
from .synthetic import PasskeyMixer
from .tokenizer import load_tokenizer

STATE_VERSION = 1


def lane_shards(tags: list[str], n_lanes: int, seed: int, shuffle: bool) -> list[list[str]]:
    """The shards of every lane: a seeded permutation of the list dealt round-robin."""
    order = np.random.default_rng(seed).permutation(len(tags)) if shuffle else np.arange(len(tags))
    lanes: list[list[str]] = [[] for _ in range(n_lanes)]
    for i, j in enumerate(order):
        lanes[i % n_lanes].append(tags[j])
    return lanes


def _digest(tags: list[str]) -> str:
    return hashlib.blake2b("\n".join(tags).encode(), digest_size=8).hexdigest()


def _mixer(cfg, tokenizer, lane: int) -> PasskeyMixer:
    return PasskeyMixer(
        tokenizer,
        fraction=cfg.synthetic_passkey_fraction,
        lengths=cfg.passkey_lengths,
        seed=cfg.synthetic_passkey_seed,
        lane=lane,
    )


class EpisodeDataset(IterableDataset):
    """The pipeline for one rank; iterate it (directly or in a StatefulDataLoader) for episodes."""

    def __init__(self, cfg, *, rank: int = 0, world_size: int = 1):
        if not (world_size >= 1 and 0 <= rank < world_size):
            raise ValueError(f"rank must be in [0, world_size), got rank={rank}, world_size={world_size}")
        self.cfg, self.rank, self.world_size = cfg, rank, world_size
        self.workers = max(1, cfg.num_workers)
        self.n_lanes = world_size * self.workers * cfg.batch_size
        # list the shards here, in the launching process: a wrong source fails at once, in one line
        self.reader, self.tags = open_documents(cfg)
        if len(self.tags) < self.n_lanes:
            from .shard_advice import too_few_shards

            raise ValueError(
                too_few_shards(cfg, self.reader, len(self.tags), world_size=world_size, workers=self.workers)
            )
        self.lanes = lane_shards(self.tags, self.n_lanes, cfg.seed, cfg.shuffle_shards)
        if cfg.synthetic_passkey_fraction > 0:  # a length too short for the prompt fails here, in one line
            mixer = _mixer(cfg, load_tokenizer(cfg.tokenizer), 0)
            for n in cfg.passkey_lengths:
                try:
                    mixer.document(0, length=n)
                except ValueError as e:
                    raise ValueError(f"data.synthetic_passkey_lengths: {n} tokens: {e}") from None
        self.live = None  # the iterator of the last __iter__ in this process

    def lane_ids(self, worker: int) -> list[int]:
        B = self.cfg.batch_size
        return [(self.rank * self.workers + worker) * B + b for b in range(B)]

    def __iter__(self):
        info = get_worker_info()
        self.live = EpisodeIterator(self, worker=info.id if info is not None else 0)
        return self.live


class EpisodeIterator:
    """Yields episodes [B, S, T+1]; `state_dict()` holds positions, dedup memories, packing buffers
    and counters (plain ints and tensors, safe for `torch.load(weights_only=True)`)."""

    def __init__(self, ds: EpisodeDataset, worker: int):
        cfg = ds.cfg
        self.cfg, self.worker = cfg, worker
        self.layout = [ds.world_size, ds.workers, cfg.batch_size, ds.rank, worker]
        self.tokenizer = load_tokenizer(cfg.tokenizer)
        self.lanes = ds.lane_ids(worker)
        self.streams = [
            DocumentStream(
                ds.reader,
                ds.lanes[g],
                self.tokenizer,
                min_doc_tokens=cfg.min_doc_tokens,
                dedup=cfg.dedup,
                dedup_memory=cfg.dedup_memory,
                tokenize_batch_bytes=cfg.tokenize_batch_bytes,
                shuffle_seed=[cfg.seed, g] if cfg.shuffle_shards else None,
                epochs=cfg.epochs,
                name=f"data row stream {g}",
            )
            for g in self.lanes
        ]
        self.digests = [_digest(ds.lanes[g]) for g in self.lanes]
        self.packers = [Packer(self.tokenizer.eos_id, cfg.episode_tokens) for _ in self.lanes]
        on = cfg.synthetic_passkey_fraction > 0
        self.mixers = [_mixer(cfg, self.tokenizer, g) if on else None for g in self.lanes]
        self.episodes = 0

    def __iter__(self):
        return self

    def __next__(self):
        rows = []
        for stream, packer, mixer in zip(self.streams, self.packers, self.mixers, strict=True):
            row = packer.pop_row()
            while row is None:
                batch = stream.next_batch()
                if batch is None:  # finite epochs: the first row stream to run dry ends the rank
                    raise StopIteration
                for _, tokens in batch:
                    packer.push(tokens)
                    for doc in mixer.after(len(tokens)) if mixer is not None else ():
                        packer.push(doc)
                row = packer.pop_row()
            rows.append(row)
        self.episodes += 1
        return rows_to_episode(rows, self.cfg.segments, self.cfg.train_length)

    def counters(self) -> dict[str, int]:
        return ctr.merge([s.counters for s in self.streams])

    def state_dict(self) -> dict:
        return {
            "version": STATE_VERSION,
            "layout": list(self.layout),
            "episodes": self.episodes,
            "rows": {
                str(g): {"shards": d, "stream": s.state_dict(), "buffer": p.state_dict()}
                | ({"passkey": m.state_dict()} if m is not None else {})
                for g, d, s, p, m in zip(self.lanes, self.digests, self.streams, self.packers, self.mixers, strict=True)
            },
        }

    def load_state_dict(self, sd: dict) -> None:
        if sd.get("version") != STATE_VERSION:
            raise ValueError(f"data state version {sd.get('version')!r} is not {STATE_VERSION}")
        if list(sd["layout"]) != self.layout:
            w, nw, b, r, k = sd["layout"]
            raise ValueError(
                f"data state was saved by rank {r} worker {k} of world_size {w} x workers {nw} x batch_size {b}; "
                f"this is rank {self.layout[3]} worker {self.worker} of {self.layout[0]} x {self.layout[1]} x "
                f"{self.layout[2]}: resume with the same data layout"
            )
        for g, d, s, p, m in zip(self.lanes, self.digests, self.streams, self.packers, self.mixers, strict=True):
            row = sd["rows"][str(g)]
            if row["shards"] != d:
                raise ValueError(f"data row stream {g}: its shard list changed since the state was saved")
            if (m is not None) != ("passkey" in row):
                raise ValueError(
                    f"data row stream {g}: data.synthetic_passkey_fraction was turned "
                    f"{'on' if m is not None else 'off'} since the state was saved; resume with the same data settings"
                )
            if m is not None:
                m.load_state_dict(row["passkey"])
            s.load_state_dict(row["stream"])
            p.load_state_dict(row["buffer"])
        self.episodes = int(sd["episodes"])
