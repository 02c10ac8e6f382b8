import pytest

from stuffed_mamba.model import Mamba2Config
from tests.helpers import OFFICIAL_370M_CONFIG_JSON


def test_state_size_780m_is_the_papers_19_3M():
    assert Mamba2Config(d_model=1536, n_layer=48, vocab_size=50277).state_size == 19_353_600


def test_derived_sizes_of_370m():
    c = Mamba2Config(d_model=1024, n_layer=48, vocab_size=50277)
    assert (c.d_inner, c.nheads, c.vocab_size_padded) == (2048, 32, 50288)
    assert c.state_size == 48 * (32 * 64 * 128 + (2048 + 256) * 3)


def test_from_mamba_ssm_official_config_json():
    # the config.json of state-spaces/mamba2-370m
    raw = dict(OFFICIAL_370M_CONFIG_JSON)
    c = Mamba2Config.from_mamba_ssm(raw)
    assert (c.d_model, c.n_layer, c.d_state, c.headdim, c.vocab_size_padded) == (1024, 48, 128, 64, 50288)
    assert Mamba2Config.from_mamba_ssm(c.to_mamba_ssm()) == c


@pytest.mark.parametrize(
    "kw, msg",
    [
        (dict(d_model=30, headdim=64), "not a multiple of headdim"),
        (dict(d_model=64, headdim=32, ngroups=3), "not a multiple of ngroups"),
        (dict(d_model=0), "d_model must be >= 1"),
    ],
)
def test_impossible_configs_are_one_line_errors(kw, msg):
    with pytest.raises(ValueError, match=msg):
        Mamba2Config(**kw)


def test_mamba1_config_is_refused():
    with pytest.raises(ValueError, match="only Mamba2"):
        Mamba2Config.from_mamba_ssm({"d_model": 8, "n_layer": 1, "vocab_size": 10, "ssm_cfg": {"layer": "Mamba1"}})
