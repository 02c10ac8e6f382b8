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


def _report(overrides):
    from stuffed_mamba.model import Mamba2LM
    from stuffed_mamba.training.config import load_recipe
    from stuffed_mamba.training.report import startup_report

    cfg = load_recipe("recipes/tiny_cpu.yaml", overrides)
    model = Mamba2LM(Mamba2Config(d_model=32, n_layer=2, d_state=16, headdim=16, vocab_size=64))
    return cfg, startup_report(cfg, model, world_size=1, resume_from=None, recipe="recipes/tiny_cpu.yaml")


def test_the_report_states_what_the_schedule_covers_and_warns_when_episode_steps_change_it():
    """tiny_cpu's `total_steps: 600` is written for segment steps (50 episodes x 12 segments);
    optim.bptt=full needs optimizer_step=episode, under which 600 means 600 episodes: the report
    says what each run covers, and the changed meaning gets one warning line naming the fix."""
    cfg, lines = _report([])
    d = cfg.data
    assert cfg.optim.total_steps == 600 and d.segments == 12
    covers = next(line for line in lines if line.startswith("covers"))
    segment_tokens = d.batch_size * d.train_length
    assert covers.endswith(f"600 segment steps = 50 episodes, {600 * segment_tokens:,} tokens")
    assert not [line for line in lines if "optim.total_steps=" in line]

    cfg, lines = _report(["optim.bptt=full", "optim.optimizer_step=episode"])
    covers = next(line for line in lines if line.startswith("covers"))
    assert covers.endswith(f"600 episode steps = 600 episodes, {600 * 12 * segment_tokens:,} tokens")
    warnings = [line for line in lines if "optim.total_steps=600 is written" in line]
    assert len(warnings) == 1 and warnings[0].startswith("WARNING: ")
    assert warnings[0].endswith("add optim.total_steps=50 optim.warmup_steps=3")

    # the fix given: the same tokens as the recipe, and no warning
    cfg, lines = _report(["optim.bptt=full", "optim.optimizer_step=episode", "optim.total_steps=50"])
    covers = next(line for line in lines if line.startswith("covers"))
    assert covers.endswith(f"50 episode steps = 50 episodes, {600 * segment_tokens:,} tokens")
    assert not [line for line in lines if "is written" in line]
