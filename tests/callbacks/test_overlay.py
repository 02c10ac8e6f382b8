"""Figures over training (stuffed_mamba.probes.overlay): one curve per probe step, coloured by step,
drawn from the JSON summaries beside the run, so that a resumed run's figure still holds every step."""

from __future__ import annotations

import json

import numpy as np
import pytest

from stuffed_mamba.probes import overlay


def _curves(fig):
    """The data lines of the figure's main axes (not the dotted T_train line)."""
    return [ln for ln in fig.axes[0].get_lines() if ln.get_linestyle() != ":"]


@pytest.mark.parametrize(
    "probe,summary",
    [
        ("position_loss", lambda s: {"bucket_positions": [1, 10, 100, 500], "bucket_loss": [7, 6, 5 + s / 100, 6]}),
        ("retention", lambda s: {"max_alpha_curve": {"t": [1, 10, 100, 512], "max": [1, 0.9, 0.5, s / 1000]}}),
        ("memory_lengths", lambda s: {"tau": [[3.0, s / 10], [1.5, 200.0]]}),
        ("effrem", lambda s: {"curves": {"256": {"t": [32, 128, 224], "effrem": [0.01, 0.1, s / 1000]}}}),
        (
            "states",
            lambda s: {"t": [64, 128, 256, 512], "var": [[[1, 2, 4, s / 10], [1, 1, 1, 1]]], "train_length": 128},
        ),
    ],
)
def test_one_curve_per_step_coloured_by_step(probe, summary):
    import matplotlib.pyplot as plt

    steps = [60, 120, 180, 240]
    fig = overlay.figure(probe, [(s, summary(s)) for s in steps], train_length=128)
    lines = _curves(fig)
    assert len(lines) == len(steps)
    colours = [ln.get_color() for ln in lines]
    cbar = fig.axes[1].collections or fig.axes[1].images  # the colour bar's axes
    assert cbar is not None and fig.axes[1].get_ylim() == pytest.approx((60, 240))
    viridis = plt.get_cmap("viridis")
    for s, c in zip(steps, colours, strict=True):
        assert np.allclose(c, viridis((s - 60) / 180)), (s, c)
    if probe == "states":  # var_t / var_T_train, max over heads: the last point of step s is s/10 / 2
        assert lines[-1].get_ydata()[-1] == pytest.approx(240 / 10 / 2)
    plt.close(fig)


def test_passkey_heatmap_is_accuracy_by_length_and_step():
    import matplotlib.pyplot as plt

    history = [
        (60, {"accuracy_by_length": {"256": 1.0, "512": 0.5, "1024": 0.0}}),
        (120, {"accuracy_by_length": {"256": 1.0, "512": 1.0}}),  # the time budget stopped it before 1024
    ]
    fig = overlay.figure("passkey", history, train_length=128)
    grid = np.asarray(fig.axes[0].images[0].get_array().filled(np.nan))
    expected = np.array([[1.0, 1.0], [0.5, 1.0], [0.0, np.nan]])  # rows: 256, 512, 1024; columns: steps
    assert np.allclose(grid, expected, equal_nan=True)
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["60", "120"]
    plt.close(fig)


def test_history_is_read_back_from_the_runs_json_files(tmp_path):
    """After a resume the callback starts empty: the figure's steps come from the files, and the
    files of an attempt past the resumed step are left out."""
    from stuffed_mamba.callbacks.base import ProbeCallback

    out = tmp_path / "probes" / "position_loss"
    out.mkdir(parents=True)
    for s in (60, 120, 180):
        (out / f"step_{s:08d}.json").write_text(json.dumps({"step": s, "late_loss_rise": s / 60}))
    cb = ProbeCallback(every_n_steps=60, time_budget_s=1.0, run_dir=str(tmp_path))
    assert [(s, r["late_loss_rise"]) for s, r in cb.history(120, out)] == [(60, 1.0), (120, 2.0)]
    assert cb.history(120, None) == []  # without a run dir: what this process ran
