"""Mamba2LM: embedding, n_layer blocks x + Mixer(RMSNorm(x)) (residual in fp32), final RMSNorm, tied LM head.

The state_dict keys are mamba_ssm's `MambaLMHeadModel` keys, so official checkpoints load as they are.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from stuffed_mamba.model.config import Mamba2Config
from stuffed_mamba.model.intervention import Intervention
from stuffed_mamba.model.loss import chunked_cross_entropy
from stuffed_mamba.model.mixer import Mamba2Mixer
from stuffed_mamba.model.state import LayerState, ModelState
from stuffed_mamba.ops import rms_norm


class RMSNorm(nn.Module):
    def __init__(self, d: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.weight, self.eps)


class Block(nn.Module):
    def __init__(self, config: Mamba2Config, backend: str):
        super().__init__()
        self.norm = RMSNorm(config.d_model, config.rms_norm_eps)
        self.mixer = Mamba2Mixer(config, backend)

    def forward(self, x: torch.Tensor, state: LayerState | None):
        out, state = self.mixer(self.norm(x.to(self.norm.weight.dtype)), state)
        return x + out.float(), state  # the residual stream stays fp32, as mamba_ssm's residual_in_fp32

    def step(self, x: torch.Tensor, state: LayerState):
        out, state = self.mixer.step(self.norm(x.to(self.norm.weight.dtype)), state)
        return x + out.float(), state


class Backbone(nn.Module):
    def __init__(self, config: Mamba2Config, backend: str):
        super().__init__()
        self.embedding = nn.Embedding(config.vocab_size_padded, config.d_model)
        self.layers = nn.ModuleList(Block(config, backend) for _ in range(config.n_layer))
        self.norm_f = RMSNorm(config.d_model, config.rms_norm_eps)


@dataclass
class LMOutput:
    logits: torch.Tensor | None  # [B, T, V_padded]; None when labels were given
    state: ModelState  # the state after the last position
    loss: torch.Tensor | None = None  # mean cross-entropy over labels != -100


class Mamba2LM(nn.Module):
    def __init__(self, config: Mamba2Config, backend: str = "torch"):
        super().__init__()
        self.config = config
        self.backend = backend
        self.backbone = Backbone(config, backend)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size_padded, bias=False)
        self.gradient_checkpointing = False
        self.loss_chunk_tokens = 4096
        self.reset_parameters()
        if config.tie_embeddings:
            self.lm_head.weight = self.backbone.embedding.weight

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None):
        """mamba_ssm's `_init_weights`: N(0, 0.02) embeddings, default Linear/Conv init, out_proj scaled
        by 1/sqrt(n_layer) (GPT-2's pre-norm residual rule), Mamba's Delta and A initialisation."""
        c = self.config
        nn.init.normal_(self.backbone.embedding.weight, std=c.initializer_range, generator=generator)
        for block in self.backbone.layers:
            m = block.mixer
            for lin in (m.in_proj, m.out_proj):
                nn.init.kaiming_uniform_(lin.weight, a=math.sqrt(5), generator=generator)
            nn.init.kaiming_uniform_(m.conv1d.weight, a=math.sqrt(5), generator=generator)
            bound = 1 / math.sqrt(c.d_conv)  # fan_in of a depthwise kernel
            nn.init.uniform_(m.conv1d.bias, -bound, bound, generator=generator)
            if c.rescale_prenorm_residual:
                m.out_proj.weight /= math.sqrt(c.n_layer)
            m.reset_ssm_parameters(generator)
            block.norm.weight.fill_(1.0)
            m.norm.weight.fill_(1.0)
        self.backbone.norm_f.weight.fill_(1.0)
        if not c.tie_embeddings:
            nn.init.normal_(self.lm_head.weight, std=c.initializer_range, generator=generator)

    # ------------------------------------------------------------------------------------------
    def forward(
        self, input_ids: torch.Tensor, state: ModelState | None = None, labels: torch.Tensor | None = None
    ) -> LMOutput:
        """input_ids [B, T] -> logits [B, T, V_padded] (or loss, when `labels` [B, T] is given) and the final state."""
        x, new_state = self._blocks(input_ids, state)
        hidden = self.backbone.norm_f(x.to(self.backbone.norm_f.weight.dtype))
        if labels is not None:
            loss = chunked_cross_entropy(hidden, self.lm_head, labels, chunk_tokens=self.loss_chunk_tokens)
            return LMOutput(logits=None, state=new_state, loss=loss)
        return LMOutput(logits=self.lm_head(hidden), state=new_state)

    def advance(self, input_ids: torch.Tensor, state: ModelState | None = None) -> ModelState:
        """input_ids [B, T] -> the state after position T, without norm_f and the LM head: no [B, T, V]
        logits (the chunked prefill of probes and decoding)."""
        return self._blocks(input_ids, state)[1]

    def _blocks(self, input_ids: torch.Tensor, state: ModelState | None) -> tuple[torch.Tensor, ModelState]:
        """Embedding, then every block with its layer state: (residual stream [B, T, d] fp32, new state)."""
        x = self.backbone.embedding(input_ids).float()
        new_layers = []
        for i, block in enumerate(self.backbone.layers):
            layer_state = None if state is None else state.layers[i]
            if self._checkpointing_active():
                x, layer_state = _checkpointed_block(block, x, layer_state)
            else:
                x, layer_state = block(x, layer_state)
            new_layers.append(layer_state)
        return x, ModelState(new_layers)

    @torch.no_grad()
    def step(self, token_ids: torch.Tensor, state: ModelState) -> tuple[torch.Tensor, ModelState]:
        """One recurrent step (the decode path): token_ids [B] -> (logits [B, V_padded], new state)."""
        x = self.backbone.embedding(token_ids).float()
        new_layers = []
        for i, block in enumerate(self.backbone.layers):
            x, layer_state = block.step(x, state.layers[i])
            new_layers.append(layer_state)
        hidden = self.backbone.norm_f(x.to(self.backbone.norm_f.weight.dtype))
        return self.lm_head(hidden), ModelState(new_layers)

    def _checkpointing_active(self) -> bool:
        # the window intervention keeps extra state that checkpointing would drop; it is for evaluation only
        windowed = self.intervention is not None and self.intervention.window is not None
        return self.gradient_checkpointing and self.training and torch.is_grad_enabled() and not windowed

    def init_state(self, batch_size: int) -> ModelState:
        p = self.lm_head.weight
        return ModelState.zeros(self.config, batch_size, device=p.device, dtype=p.dtype)

    def set_intervention(self, intervention: Intervention | None) -> None:
        """Apply a training-free intervention to every layer (None or all-identity removes it)."""
        if intervention is not None and intervention.is_identity:
            intervention = None
        for block in self.backbone.layers:
            block.mixer.intervention = intervention

    @property
    def intervention(self) -> Intervention | None:
        return self.backbone.layers[0].mixer.intervention

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())  # tied weights counted once by parameters()

    # ------------------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, path, backend: str = "torch", *, map_location="cpu") -> Mamba2LM:
        """A local folder (or hub name) holding an official mamba_ssm checkpoint or a transformers Mamba2 one."""
        from stuffed_mamba.model.folder import load_strict, read_folder

        config, sd, folder = read_folder(path, map_location=map_location)
        return load_strict(cls(config, backend=backend), sd, folder)

    def save_pretrained(self, path, *, format: str = "mamba_ssm") -> None:
        """Write a folder others load without us: "mamba_ssm" (config.json + model.safetensors) or "hf"."""
        from stuffed_mamba.model.pretrained import save_pretrained

        save_pretrained(self, path, format=format)


def _checkpointed_block(block: Block, x: torch.Tensor, state: LayerState | None):
    """Activation checkpointing of one block with the state passed in and out as plain tensors."""
    if state is None:

        def run(x):
            y, s = block(x, None)
            return y, s.conv, s.ssm

        y, conv, ssm = checkpoint(run, x, use_reentrant=False)
    else:

        def run(x, conv, ssm):
            y, s = block(x, LayerState(conv, ssm))
            return y, s.conv, s.ssm

        y, conv, ssm = checkpoint(run, x, state.conv, state.ssm, use_reentrant=False)
    return y, LayerState(conv, ssm)
