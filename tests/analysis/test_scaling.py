"""From a results table to thresholds, fits and plots: synthetic sweeps with known laws."""

import json

import torch

from stuffed_mamba.analysis.results import append_row, read_results, write_csv
from stuffed_mamba.analysis.scaling import analyze
from stuffed_mamba.analysis.thresholds import thresholds
from stuffed_mamba.cli import main
from tests.helpers import rel_err

LENGTHS = [2**k for k in range(10, 19)]  # 1K .. 256K


def synthetic_sweep(path, t_forget_of, t_recall_of, sizes):
    """Rows of a sweep where a run forgets iff T_train >= t_forget_of(N_S) (section 4.2's law)."""
    for n_s in sizes:
        for t in LENGTHS:
            append_row(
                path,
                {
                    "cell": f"{n_s}_T{t}",
                    "model": f"m{n_s}",
                    "state_size": n_s,
                    "train_length": t,
                    "learned_to_forget": t >= t_forget_of(n_s),
                    "t_recall": t_recall_of(n_s),
                    "status": "ok",
                },
            )


def test_thresholds_are_the_shortest_forgetting_length_and_censoring_is_reported():
    rows = [
        # forgets from 4K on: T_forget = 4K
        *({"state_size": 10, "train_length": t, "learned_to_forget": t >= 4096} for t in (1024, 2048, 4096, 8192)),
        # never forgets: only a lower bound
        *({"state_size": 20, "train_length": t, "learned_to_forget": False} for t in (1024, 2048)),
        # always forgets: only an upper bound
        *({"state_size": 5, "train_length": t, "learned_to_forget": True} for t in (1024, 2048)),
        # not monotone: forgets at 1K, not at 2K, again from 4K: the law's threshold is 4K
        *({"state_size": 30, "train_length": t, "learned_to_forget": t != 2048} for t in (1024, 2048, 4096, 8192)),
    ]
    th = {t.state_size: t for t in thresholds(rows)}
    assert (th[10].t_forget, th[10].censored, th[10].monotone) == (4096, "none", True)
    assert (th[20].t_forget, th[20].censored) == (2048, "above")
    assert (th[5].t_forget, th[5].censored) == (1024, "at_or_below")
    assert (th[30].t_forget, th[30].censored, th[30].monotone) == (4096, "none", False)


def test_rise_criterion_uses_the_late_loss_rise(tmp_path, capsys):
    rows = [
        {
            "cell": f"c{t}",
            "state_size": 10,
            "train_length": t,
            "learned_to_forget": True,
            "late_loss_rise": rise,
            "status": "ok",
        }
        for t, rise in ((64, 0.9), (128, 0.4), (256, 0.05))
    ]
    rows.append({"cell": "failed", "state_size": 10, "train_length": 512, "status": "fit_failed: rc=1"})
    for r in rows:
        append_row(tmp_path / "results.jsonl", r)
    paper = analyze(tmp_path, None).thresholds[0]
    assert (paper.t_forget, paper.censored) == (64, "at_or_below")
    soft = analyze(tmp_path, None, criterion="rise:0.5").thresholds[0]
    assert (soft.t_forget, soft.censored) == (128, "none")
    assert [t for t, _ in soft.runs] == [64, 128, 256]  # the failed run is left out
    assert main(["analyze", "scaling", str(tmp_path), "--criterion", "rise:0.5", "--no-plots", "--markdown"]) == 0
    md = capsys.readouterr().out
    assert "| c64 | 10 | 64 |" in md and "| 10 | 64- 128+ 256+ | 128 | none |" in md
    assert main(["analyze", "scaling", str(tmp_path), "--criterion", "rise:x", "--no-plots"]) == 2
    assert "criterion" in capsys.readouterr().err


def test_results_table_skips_bad_lines_and_keeps_the_last_row_of_a_cell(tmp_path):
    p = tmp_path / "results.jsonl"
    append_row(p, {"cell": "a", "state_size": 1, "train_length": 64, "learned_to_forget": False})
    with open(p, "a") as f:
        f.write('{"cell": "half-writ\n')  # a crashed writer
        f.write('{"cell": "b", "train_length": 64}\n')  # no state_size
    append_row(p, {"cell": "a", "state_size": 1, "train_length": 64, "learned_to_forget": True})
    rows, skipped = read_results(tmp_path)
    assert skipped == 2 and len(rows) == 1 and rows[0]["learned_to_forget"] is True
    write_csv(rows, tmp_path / "r.csv")
    again, _ = read_results(tmp_path / "r.csv")
    assert again[0]["state_size"] == 1 and again[0]["learned_to_forget"] is True


def test_analyze_recovers_a_linear_forget_law_from_a_sweep(tmp_path):
    # T_forget = 5.172*N_S - 4.469 (K tokens, N_S in M): the sweep can only see it to the grid's resolution
    law = lambda n_s: (5.172 * n_s / 1e6 - 4.469) * 1e3
    sizes = [2_000_000, 4_000_000, 8_000_000, 16_000_000, 32_000_000]
    synthetic_sweep(tmp_path / "results.jsonl", law, lambda n_s: None, sizes)
    rep = analyze(tmp_path, tmp_path / "out", units="paper")
    ths = {t.state_size: t for t in rep.thresholds}
    for n_s in sizes:  # the smallest swept length at or above the law
        assert ths[n_s].t_forget == min(t for t in LENGTHS if t >= law(n_s))
    # grid rounding up to 2x: the fitted slope is within a factor of 2 of the law's
    assert 5.172 <= rep.forget_fit.a <= 2 * 5.172 and rep.forget_fit.r2 > 0.9
    assert rep.recall_fit is None and any("T_recall law not fitted" in n for n in rep.notes)
    assert (tmp_path / "out" / "forget_law.png").stat().st_size > 10_000
    saved = json.loads((tmp_path / "out" / "scaling.json").read_text())
    assert saved["forget_fit"]["n"] == len(sizes)


def test_analyze_fits_t_recall_and_the_cli_plots_both(tmp_path, capsys):
    recall = lambda n_s: round((4.756 * (1.365 ** (n_s / 1e6) - 1) - 0.742) * 1e3)
    sizes = [2_000_000, 5_000_000, 8_000_000, 11_000_000, 13_000_000]
    synthetic_sweep(tmp_path / "results.jsonl", lambda n_s: 5.172 * n_s / 1e3 - 4469, recall, sizes)
    assert main(["analyze", "scaling", str(tmp_path / "results.jsonl"), "--units", "paper"]) == 0
    out = capsys.readouterr().out
    assert "T_recall fit" in out and "T_forget fit" in out
    rep = json.loads((tmp_path / "scaling.json").read_text())
    assert rel_err(torch.tensor(rep["recall_fit"]["params"]["c"]), torch.tensor(1.365)) < 1e-3
    assert (tmp_path / "recall_law.png").exists() and (tmp_path / "forget_law.png").exists()


def test_cli_scaling_on_a_missing_table_is_one_line(tmp_path, capsys):
    assert main(["analyze", "scaling", str(tmp_path / "none.jsonl")]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_loss_vs_position_plot_per_model_from_the_runs_curves(tmp_path):
    for t in (64, 256):
        append_row(
            tmp_path / "results.jsonl",
            {
                "cell": f"m_T{t}",
                "model": "m",
                "state_size": 100,
                "train_length": t,
                "learned_to_forget": t == 256,
                "status": "ok",
            },
        )
        run = tmp_path / "runs" / f"m_T{t}"
        run.mkdir(parents=True)
        pos = [1, 10, 100, 1000]
        (run / "position_loss.json").write_text(
            json.dumps(
                {
                    "train_length": t,
                    "positions": pos,
                    "loss": [5.0, 4.0, 4.0, 4.0 + (t == 64)],
                    "learned_to_forget": t == 256,
                }
            )
        )
    rep = analyze(tmp_path, tmp_path / "out")
    png = tmp_path / "out" / "position_loss_m.png"
    assert png in rep.plots and png.stat().st_size > 10_000
