import pytest
import torch

from stuffed_mamba.model import Mamba2Config, Mamba2LM
from tests import helpers


def tiny_config(**kw) -> Mamba2Config:
    """The kit's tiny model with 2 groups of smaller heads (group and head handling are tested here)."""
    return helpers.tiny_config(**{"vocab_size": 100, "d_state": 8, "headdim": 8, "ngroups": 2, **kw})


def randomise_ssm_params(model: Mamba2LM, seed: int = 0) -> Mamba2LM:
    """Non-trivial dt_bias / A_log / D / norm weights: the defaults would hide mistakes in their use."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for block in model.backbone.layers:
            m = block.mixer
            m.dt_bias.copy_(torch.randn(m.dt_bias.shape, generator=g) - 1)
            m.A_log.copy_(torch.rand(m.A_log.shape, generator=g) * 2 - 0.5)
            m.D.copy_(torch.randn(m.D.shape, generator=g))
            m.norm.weight.copy_(1 + 0.1 * torch.randn(m.norm.weight.shape, generator=g))
            block.norm.weight.copy_(1 + 0.1 * torch.randn(block.norm.weight.shape, generator=g))
    return model


@pytest.fixture
def tiny_model() -> Mamba2LM:
    torch.manual_seed(0)
    return randomise_ssm_params(Mamba2LM(tiny_config()))
