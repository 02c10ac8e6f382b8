"""The recipe's `probes:` section: which forgetting probes run during training, how often, how big.

Plain dataclasses with only str/int/float/bool/Optional/list fields, so the training recipe
embeds `ProbesConfig` in its OmegaConf structured schema and an unknown key is an error.
Lengths are in tokens. `None` lengths default to multiples of the recipe's T_train
(`data.train_length`), because what the probes look for happens just past T_train.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional


@dataclass
class PasskeyProbeConfig:
    """Passkey retrieval (appendix B.1): accuracy per (length, depth), T_recall."""

    enabled: bool = True
    every_n_steps: int = 500
    # context lengths T; None -> [T_train/2, T_train, 2 T_train, 4 T_train] clipped to >= 256
    lengths: Optional[list[int]] = None
    samples: int = 4  # n needle depths per length: the i-th at T*i/n - 1
    repeats: int = 1  # keys tried per (length, depth)
    last_r: list[int] = field(default_factory=lambda: [1024, 2048, 4096, 8192])
    prefill_chunk: int = 4096  # tokens per prefill forward; the state is carried between chunks
    max_new_tokens: int = 8  # greedy tokens decoded after the question
    seed: int = 0  # the probe's own generator draws the 5-digit keys
    time_budget_s: float = 600.0  # stop the sweep (and log what was done) past this


@dataclass
class RetentionProbeConfig:
    """First-token retention alpha_{1:t} = exp(sum_{j<=t} Delta_j A) per layer and head (eq. 6, fig. 3)."""

    enabled: bool = True
    every_n_steps: int = 500
    length: Optional[int] = None  # probe text length; None -> 4 T_train
    samples: int = 1  # evaluation sequences averaged over
    thresholds: list[float] = field(default_factory=lambda: [0.5, 0.9, 0.99])
    time_budget_s: float = 300.0


@dataclass
class StateStatsProbeConfig:
    """Mean/variance of every head's SSM state over time on the "newlines" prompt (section 3.3, figs. 5-6)."""

    enabled: bool = True
    every_n_steps: int = 500
    length: Optional[int] = None  # None -> 4 T_train
    n_points: int = 32  # evenly spaced time points at which the state is measured
    prefill_chunk: int = 4096
    time_budget_s: float = 300.0


@dataclass
class PositionLossProbeConfig:
    """LM loss per position on long evaluation text (section 4.2, figs. 1, 4, 10); learned_to_forget."""

    enabled: bool = True
    every_n_steps: int = 500
    length: Optional[int] = None  # None -> 4 T_train
    samples: int = 4  # prompts averaged over (the paper uses 128 at 1M tokens)
    buckets: int = 24  # log-spaced position buckets
    min_doc_tokens: int = 16384  # appendix F: evaluation documents of at least 16K tokens
    prefill_chunk: int = 4096
    time_budget_s: float = 600.0


@dataclass
class ProbesConfig:
    """All probes of a run; `enabled: false` here turns every probe callback off."""

    enabled: bool = True
    passkey: PasskeyProbeConfig = field(default_factory=PasskeyProbeConfig)
    retention: RetentionProbeConfig = field(default_factory=RetentionProbeConfig)
    states: StateStatsProbeConfig = field(default_factory=StateStatsProbeConfig)
    position_loss: PositionLossProbeConfig = field(default_factory=PositionLossProbeConfig)
