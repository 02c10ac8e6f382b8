"""Training memory of a Mamba-2 model, from its `Mamba2Config` alone (no model is built: the 780M
model would take seconds and 3 GB). Beside `state_size.py`, which counts the recurrent state N_S;
`stuffed-mamba doctor` compares the estimate with the free memory of the machine.

Per parameter (fp32 under every strategy and precision, docs/training.md "Precision"): DDP
4 (weights) + 4 (gradients) + 8 (AdamW's moments) bytes; DeepSpeed the same plus ZeRO's fp32
copy of each rank's partition (4), the moments and that copy partitioned over the data-parallel
ranks from ZeRO-1 on, the gradients from ZeRO-2 on, the weights at ZeRO-3.
Activations of one segment of `tokens` = B x T tokens: with per-layer checkpointing, each layer's
input plus one layer's internals (~8 x d_inner per token) and its chunk states; without, every
layer's. Plus one 4096-token chunk of fp32 logits and their gradient. Not counted: allocator
fragmentation, CUDA context, communication buffers (DeepSpeed's buckets).
"""

from __future__ import annotations

from dataclasses import dataclass

from stuffed_mamba.model.config import Mamba2Config

GIB = 1 << 30
LOSS_CHUNK = 4096  # tokens whose fp32 logits exist at once (Mamba2LM.loss_chunk_tokens)


def count_parameters(c: Mamba2Config) -> int:
    """Parameters of `Mamba2LM(c)`."""
    per_layer = (
        c.d_model * c.d_in_proj  # in_proj
        + c.conv_dim * (c.d_conv + 1)  # conv1d weight and bias
        + 3 * c.nheads  # dt_bias, A_log, D
        + c.d_inner  # gated norm
        + c.d_inner * c.d_model  # out_proj
        + c.d_model  # the block's norm
    )
    head = 0 if c.tie_embeddings else c.vocab_size_padded * c.d_model
    return c.vocab_size_padded * c.d_model + c.n_layer * per_layer + c.d_model + head


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes per device: `states` (weights, gradients, optimiser), `activations` (one segment's,
    logits included)."""

    parameters: int
    states: float
    activations: float

    @property
    def total(self) -> int:
        return int(self.states + self.activations)

    def describe(self) -> str:
        return (
            f"{self.parameters / 1e6:.0f}M params: weights+grads+optimizer {self.states / GIB:.1f} GiB, "
            f"activations {self.activations / GIB:.1f} GiB; estimate"
        )


def training_memory(
    c: Mamba2Config,
    *,
    tokens: int,
    activation_bytes: int = 4,
    activation_checkpointing: bool = False,
    zero_stage: int | None = None,
    ranks: int = 1,
) -> MemoryEstimate:
    """Per-device training memory for segments of `tokens` = B x T tokens; `activation_bytes` 2
    under bf16 autocast; `zero_stage` None for DDP / one device, else DeepSpeed's stage over `ranks`."""
    P = count_parameters(c)
    if zero_stage is None:
        per_param = 4 + 4 + 8
    else:
        per_param = 4 / (ranks if zero_stage >= 3 else 1) + 4 / (ranks if zero_stage >= 2 else 1) + 12 / ranks
    a = activation_bytes
    one_layer = (
        tokens * (8 * c.d_inner + c.d_in_proj) * a + tokens // c.chunk_size * c.nheads * c.headdim * c.d_state * 4
    )
    stored = tokens * c.d_model * a * c.n_layer
    acts = stored + one_layer if activation_checkpointing else c.n_layer * one_layer + stored
    logits = LOSS_CHUNK * c.vocab_size_padded * 4 * 3
    return MemoryEstimate(P, P * per_param, acts + logits)
