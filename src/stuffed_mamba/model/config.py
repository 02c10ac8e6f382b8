"""Mamba2Config: the architecture of a Mamba-2 language model (paper appendix A)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass

# state-spaces/mamba2-{130m,370m,780m}: every other field is Mamba2Config's default (= mamba_ssm's).
OFFICIAL_SIZES: dict[str, dict[str, int]] = {
    "130m": {"d_model": 768, "n_layer": 24, "vocab_size": 50277},
    "370m": {"d_model": 1024, "n_layer": 48, "vocab_size": 50277},
    "780m": {"d_model": 1536, "n_layer": 48, "vocab_size": 50277},
    "1.3b": {"d_model": 2048, "n_layer": 48, "vocab_size": 50277},
    "2.7b": {"d_model": 2560, "n_layer": 64, "vocab_size": 50277},
}


@dataclass
class Mamba2Config:
    """Field names follow mamba_ssm's `MambaConfig` + `ssm_cfg`; paper letters in comments."""

    d_model: int = 768  # d
    n_layer: int = 24  # L
    vocab_size: int = 50277  # V (before padding)
    pad_vocab_size_multiple: int = 16
    d_state: int = 128  # N
    d_conv: int = 4  # k, the short convolution's kernel
    expand: int = 2  # d_inner = expand * d
    headdim: int = 64  # P
    ngroups: int = 1  # B and C are shared by the nheads/ngroups heads of a group
    chunk_size: int = 256  # the Triton kernels' tile
    rms_norm_eps: float = 1e-5
    tie_embeddings: bool = True
    # initialisation ranges (mamba_ssm's defaults)
    dt_min: float = 0.001
    dt_max: float = 0.1
    dt_init_floor: float = 1e-4
    A_init_range: tuple[float, float] = (1.0, 16.0)
    initializer_range: float = 0.02
    rescale_prenorm_residual: bool = True

    def __post_init__(self):
        for name in (
            "d_model",
            "n_layer",
            "vocab_size",
            "pad_vocab_size_multiple",
            "d_state",
            "d_conv",
            "expand",
            "headdim",
            "ngroups",
            "chunk_size",
        ):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"Mamba2Config.{name} must be >= 1, got {getattr(self, name)}")
        if self.d_inner % self.headdim:
            raise ValueError(
                f"Mamba2Config: d_inner = expand*d_model = {self.d_inner} is not a multiple of headdim={self.headdim}"
            )
        if self.nheads % self.ngroups:
            raise ValueError(f"Mamba2Config: nheads={self.nheads} is not a multiple of ngroups={self.ngroups}")
        lo, hi = self.A_init_range
        if not 0 < lo <= hi:
            raise ValueError(f"Mamba2Config.A_init_range must satisfy 0 < low <= high, got {self.A_init_range}")
        self.A_init_range = (float(lo), float(hi))

    @property
    def d_inner(self) -> int:
        return self.expand * self.d_model

    @property
    def nheads(self) -> int:  # H
        return self.d_inner // self.headdim

    @property
    def conv_dim(self) -> int:
        """Channels of the short convolution: x, B and C."""
        return self.d_inner + 2 * self.ngroups * self.d_state

    @property
    def d_in_proj(self) -> int:
        """in_proj output: [z (d_inner), xBC (conv_dim), dt (nheads)]."""
        return self.d_inner + self.conv_dim + self.nheads

    @property
    def vocab_size_padded(self) -> int:
        m = self.pad_vocab_size_multiple
        return self.vocab_size + (-self.vocab_size) % m

    @property
    def ssm_state_size(self) -> int:
        """Floats in the SSM states h [H, P, N] of all layers."""
        return self.n_layer * self.nheads * self.headdim * self.d_state

    @property
    def conv_state_size(self) -> int:
        """Floats in the conv states (the last d_conv-1 inputs of x, B, C) of all layers."""
        return self.n_layer * self.conv_dim * (self.d_conv - 1)

    @property
    def state_size(self) -> int:
        """N_S (the paper's one formula, appendix A.1): floats in the whole recurrent state,
        n_layer * (H*P*N + (d_inner + 2*G*N) * (d_conv-1))."""
        return self.ssm_state_size + self.conv_state_size

    # --- interchange with mamba_ssm's config.json ---------------------------------------------
    _SSM_CFG_KEYS = ("d_state", "d_conv", "expand", "headdim", "ngroups", "chunk_size")

    @classmethod
    def from_mamba_ssm(cls, cfg: Mapping) -> Mamba2Config:
        """From an official checkpoint's config.json (state-spaces/mamba2-*): MambaConfig + its ssm_cfg."""
        ssm_cfg = dict(cfg.get("ssm_cfg") or {})
        layer = ssm_cfg.pop("layer", "Mamba2")
        if layer != "Mamba2":
            raise ValueError(f"config.json describes a {layer} model; only Mamba2 is supported")
        if cfg.get("d_intermediate", 0):
            raise ValueError("config.json has d_intermediate > 0 (MLP blocks); only pure Mamba-2 stacks are supported")
        if cfg.get("attn_layer_idx"):
            raise ValueError(
                "config.json has attention layers (attn_layer_idx); only pure Mamba-2 stacks are supported"
            )
        ssm_keys = (*cls._SSM_CFG_KEYS, "dt_min", "dt_max", "dt_init_floor", "A_init_range")
        kw = {k: ssm_cfg[k] for k in ssm_keys if k in ssm_cfg}
        top = ("d_model", "n_layer", "vocab_size", "pad_vocab_size_multiple", "tie_embeddings")
        kw |= {k: cfg[k] for k in top if k in cfg}
        return cls(**kw)

    def to_mamba_ssm(self) -> dict:
        """The config.json that mamba_ssm's `MambaLMHeadModel.from_pretrained` reads."""
        return {
            "d_model": self.d_model,
            "d_intermediate": 0,
            "n_layer": self.n_layer,
            "vocab_size": self.vocab_size,
            "ssm_cfg": {
                "layer": "Mamba2",
                **{k: getattr(self, k) for k in self._SSM_CFG_KEYS},
                "dt_min": self.dt_min,
                "dt_max": self.dt_max,
                "dt_init_floor": self.dt_init_floor,
                "A_init_range": list(self.A_init_range),
            },
            "attn_layer_idx": [],
            "attn_cfg": {},
            "rms_norm": True,
            "residual_in_fp32": True,
            "fused_add_norm": True,
            "pad_vocab_size_multiple": self.pad_vocab_size_multiple,
            "tie_embeddings": self.tie_embeddings,
        }

    @classmethod
    def from_hf(cls, cfg: Mapping) -> Mamba2Config:
        """A transformers Mamba2 config.json (their `Mamba2Config` field names)."""
        d_model, expand, head_dim = cfg["hidden_size"], cfg.get("expand", 2), cfg.get("head_dim", 64)
        num_heads = cfg.get("num_heads", expand * d_model // head_dim)
        if num_heads * head_dim != expand * d_model:
            raise ValueError(
                f"HF config: num_heads*head_dim = {num_heads * head_dim} != expand*hidden_size = {expand * d_model}"
            )
        if cfg.get("use_bias", False):
            raise ValueError("HF config has use_bias=true (biased in/out projections); official Mamba-2 has none")
        if not cfg.get("use_conv_bias", True):
            raise ValueError("HF config has use_conv_bias=false; official Mamba-2 has a conv bias")
        return cls(
            d_model=d_model,
            n_layer=cfg["num_hidden_layers"],
            vocab_size=cfg["vocab_size"],
            pad_vocab_size_multiple=1,  # transformers does not pad: the embedding has exactly vocab_size rows
            d_state=cfg.get("state_size", 128),
            d_conv=cfg.get("conv_kernel", 4),
            expand=expand,
            headdim=head_dim,
            ngroups=cfg.get("n_groups", 1),
            chunk_size=cfg.get("chunk_size", 256),
            rms_norm_eps=cfg.get("layer_norm_epsilon", 1e-5),
            tie_embeddings=cfg.get("tie_word_embeddings", True),
        )

    def to_hf(self) -> dict:
        """The config.json of a transformers `Mamba2ForCausalLM` with these weights."""
        return {
            "model_type": "mamba2",
            "architectures": ["Mamba2ForCausalLM"],
            "hidden_size": self.d_model,
            "num_hidden_layers": self.n_layer,
            "vocab_size": self.vocab_size_padded,
            "state_size": self.d_state,
            "conv_kernel": self.d_conv,
            "expand": self.expand,
            "head_dim": self.headdim,
            "num_heads": self.nheads,
            "n_groups": self.ngroups,
            "chunk_size": self.chunk_size,
            "layer_norm_epsilon": self.rms_norm_eps,
            "tie_word_embeddings": self.tie_embeddings,
            "use_bias": False,
            "use_conv_bias": True,
            "residual_in_fp32": True,
            "rms_norm": True,
            "hidden_act": "silu",
            "time_step_min": self.dt_min,
            "time_step_max": self.dt_max,
            "time_step_floor": self.dt_init_floor,
            "time_step_limit": [0.0, float("inf")],
        }

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["A_init_range"] = list(self.A_init_range)
        return d
