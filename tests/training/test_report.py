from stuffed_mamba.analysis import predicted_thresholds
from stuffed_mamba.model import Mamba2Config
from stuffed_mamba.training.report import _horizon, _predicted


def test_predicted_thresholds_line_for_370m_and_for_a_tiny_state():
    official = predicted_thresholds(Mamba2Config(d_model=1024, n_layer=48, vocab_size=50277))
    assert _predicted(official).startswith("T_forget = 62.3K tokens, T_recall = 259.0K tokens")
    # the paper's linear fit is negative below N_S ~ 0.86M floats: no negative "prediction" is printed
    tiny = predicted_thresholds(Mamba2Config(d_model=128, n_layer=8, vocab_size=1024, d_state=32, headdim=32))
    line = _predicted(tiny)
    assert "-" not in line.split("(")[0] and line.count("n/a (N_S below the fit's range)") == 2


def test_gradient_horizon_line():
    assert _horizon("truncated", 12, 65536).startswith("horizon 65,536 tokens (truncated BPTT")
    assert _horizon("full", 12, 65536).startswith(
        "horizon 786,432 tokens (full BPTT: exact through 12 segments x 65536"
    )
