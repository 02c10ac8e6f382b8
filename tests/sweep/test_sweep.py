"""The sweep runner: a grid expands into cells, two tiny cells run end to end, the analyzer reads the table."""

import json
from pathlib import Path

import pytest

from stuffed_mamba.analysis.results import read_results
from stuffed_mamba.analysis.scaling import analyze
from stuffed_mamba.cli import main
from stuffed_mamba.sweep import expand, load_sweep, run_sweep

ROOT = Path(__file__).resolve().parents[2]

BASE = """\
model: {{d_model: 32, n_layer: 1, d_state: 8, headdim: 16, chunk_size: 32}}
data:
  source: {root}/data/sample
  tokenizer: {root}/data/sample/tokenizer.json
  min_doc_tokens: 1024
  train_length: 32
  segments: 2
  batch_size: 2
optim: {{lr: 3.0e-3, total_steps: 100, warmup_steps: 1}}
trainer: {{accelerator: cpu, devices: 1, enable_progress_bar: false}}
probes: {{enabled: false}}
run: {{dir: unused, checkpoint_every_n_steps: 1000}}
"""

SWEEP = """\
base: base.yaml
out_dir: {out}
models:
  n8: {{d_state: 8}}
  n16: {{d_state: 16}}
train_lengths: [16, 32]
tokens_per_run: 192
overrides: ["optim.total_steps={{max_steps}}", "optim.warmup_steps={{warmup_steps}}"]
eval:
  position_loss: {{length: 256, samples: 2, prefill_chunk: 128}}
  passkey: {{lengths: [128], samples: 2}}
  retention: {{min_doc_tokens: 1024}}
"""


def write_sweep(tmp_path: Path) -> Path:
    (tmp_path / "base.yaml").write_text(BASE.format(root=ROOT))
    (tmp_path / "sweep.yaml").write_text(SWEEP.format(out=tmp_path / "out"))
    return tmp_path / "sweep.yaml"


def test_grid_expands_models_major_with_equal_token_budgets(tmp_path):
    recipe, base = load_sweep(write_sweep(tmp_path))
    cells = expand(recipe, base)
    assert [c.name for c in cells] == ["n8_T16", "n8_T32", "n16_T16", "n16_T32"]
    # segment steps: B*T tokens each, so half the steps at twice the length
    assert [c.max_steps for c in cells] == [6, 3, 6, 3]
    c = cells[2]
    assert "model.d_state=16" in c.overrides and "data.train_length=16" in c.overrides
    assert "optim.total_steps=6" in c.overrides and "optim.warmup_steps=1" in c.overrides
    assert f"run.dir={tmp_path / 'out' / 'runs' / 'n16_T16'}" in c.overrides
    # batch_tokens: B*S*T equal across lengths, so every length takes the same number of steps
    recipe, base = load_sweep(tmp_path / "sweep.yaml", ["batch_tokens=128"])
    cells = expand(recipe, base)
    assert [c.overrides[2] for c in cells[:2]] == ["data.batch_size=4", "data.batch_size=2"]
    assert [c.max_steps for c in cells] == [3, 3, 3, 3]


def test_bad_sweeps_fail_before_anything_runs(tmp_path, capsys):
    path = write_sweep(tmp_path)
    assert main(["analyze", "sweep", str(path), "modelz.x=1", "--list"]) == 2  # unknown sweep key
    assert "modelz" in capsys.readouterr().err
    path.write_text(path.read_text().replace("n16: {d_state: 16}", "n16: {d_sate: 16}"))
    assert main(["analyze", "sweep", str(path), "--list"]) == 2  # a cell fit would refuse
    err = capsys.readouterr().err
    assert "d_sate" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


@pytest.mark.slow  # two real `fit` subprocesses: ~40 s on an idle 2-core machine, 2 min under load
def test_two_tiny_runs_end_to_end(tmp_path, capsys):
    path = write_sweep(tmp_path)
    assert main(["analyze", "sweep", str(path), "--count"]) == 0
    assert capsys.readouterr().out.strip() == "4"
    # cells 0 and 3 as two Slurm array tasks would run them: real `fit` subprocesses
    for cell in ("0", "n16_T32"):
        assert main(["analyze", "sweep", str(path), "--cell", cell]) == 0
    rows, skipped = read_results(tmp_path / "out")
    assert skipped == 0 and sorted(r["cell"] for r in rows) == ["n16_T32", "n8_T16"]
    by = {r["cell"]: r for r in rows}
    for r in rows:
        assert r["status"] == "ok", r["status"]
        assert r["position_loss/learned_to_forget"] in (0.0, 1.0)
        assert r["position_loss/max_within"] > 0 and r["final_train_loss"] is not None
        assert "passkey/acc/T=128" in r and "passkey/T_recall" in r
        assert {"retention", "states"} <= {k.split("/")[0] for k in r}  # every registered probe, by default
        assert (tmp_path / "out" / "runs" / r["cell"] / "checkpoints" / "last.ckpt").exists()
        summary = json.loads((tmp_path / "out" / "runs" / r["cell"] / "eval" / "position_loss.json").read_text())
        assert summary["positions"] == 256  # positions with a next token
        assert summary["late_loss_rise"] == pytest.approx(summary["loss_late"] - summary["loss_near_train_length"])
        assert len(summary["bucket_positions"]) == len(summary["bucket_loss"]) > 0
    # N_S from the loaded checkpoint's Mamba2Config equals the calculator's for the cell's fields
    from stuffed_mamba.analysis.state_size import state_size

    assert by["n8_T16"]["state_size"] == state_size(32, 1, d_state=8, headdim=16)
    assert by["n16_T32"]["state_size"] == state_size(32, 1, d_state=16, headdim=16)
    assert by["n8_T16"]["tokens_trained"] == 6 * 2 * 2 * 16  # steps x B x S x T
    # a second pass skips finished cells (resume of an interrupted sweep)
    assert main(["analyze", "sweep", str(path), "--cell", "0"]) == 0
    assert "already done" in capsys.readouterr().out
    # evaluating again with other eval settings: no training, the new row supersedes the old
    assert main(["analyze", "sweep", str(path), "eval.position_loss.buckets=3", "--cell", "0,1", "--reevaluate"]) == 0
    assert "n8_T32: no finished fit" in capsys.readouterr().out
    again, _ = read_results(tmp_path / "out")
    n_buckets = {r["cell"]: sum(k.startswith("position_loss/bucket/") for k in r) for r in again}
    assert len(again) == 2 and n_buckets["n8_T16"] <= 3 < n_buckets["n16_T32"]
    assert not (tmp_path / "out" / "runs" / "n8_T32").exists()
    rows = again
    # the analyzer reads the table: thresholds per state size, plots written
    rep = analyze(tmp_path / "out", tmp_path / "out")
    assert sorted(t.state_size for t in rep.thresholds) == sorted(r["state_size"] for r in rows)
    assert (tmp_path / "out" / "forget_law.png").exists()
    assert (tmp_path / "out" / "position_loss_n8.png").exists() and (tmp_path / "out" / "results.csv").exists()
    assert main(["analyze", "scaling", str(tmp_path / "out" / "results.jsonl")]) == 0


def test_a_failing_fit_is_recorded_not_fatal(tmp_path, capsys):
    path = write_sweep(tmp_path)
    (tmp_path / "base.yaml").write_text(BASE.format(root=tmp_path / "nowhere"))  # no data there
    recipe, base = load_sweep(path)
    rows = run_sweep(recipe, base, expand(recipe, base)[:1], in_process=True, log=lambda m: None)
    assert rows[0]["status"].startswith("fit_failed")
    assert not (tmp_path / "out" / "runs" / "n8_T16" / "result.json").exists()  # retried next time
    table, _ = read_results(tmp_path / "out")
    assert table[0]["status"].startswith("fit_failed")


def test_reshard_keeps_the_corpus_and_feeds_more_rows(tmp_path, capsys):
    from stuffed_mamba.sweep.reshard import reshard

    out = reshard(ROOT / "data" / "sample", tmp_path / "r24", 24)
    assert out["shards"] == 24 and not out["skipped"]
    assert reshard(ROOT / "data" / "sample", tmp_path / "r24", 24)["skipped"]  # written once
    counts = []
    for src in (ROOT / "data" / "sample", tmp_path / "r24"):
        assert main(["data", "inspect", str(src), "--json", "--min-doc-tokens", "1024"]) == 0
        counts.append(json.loads(capsys.readouterr().out))
    assert counts[1]["shards_read"] == 24
    # balanced by size: every shard holds one of the 24 longest documents (no row starves)
    import gzip

    def longest_document(shard):
        with gzip.open(shard, "rt") as f:
            return max(len(json.loads(line)["raw_content"]) for line in f)

    longest = [longest_document(f) for f in sorted((tmp_path / "r24" / "documents").rglob("*.json.gz"))]
    assert len(longest) == 24 and min(longest) > 16_000
    # the same documents survive dedup and the length filter, with the same tokens
    assert (counts[1]["kept"], counts[1]["tokens"]) == (counts[0]["kept"], counts[0]["tokens"])
    # a sweep with `reshard` trains every cell on the copy
    path = write_sweep(tmp_path)
    recipe, base = load_sweep(path, [f"reshard.out={tmp_path / 'r24'}", "reshard.shards=24"])
    assert f"data.source={tmp_path / 'r24'}" in expand(recipe, base)[0].overrides


@pytest.mark.parametrize("bptt", ["full", "truncated"])
def test_bptt_experiment_sweeps(bptt):
    """recipes/sweeps/bptt_{full,truncated}_cpu.yaml (docs/results.md, "Full BPTT"): the N64 cells at
    T_train 64 and 128, 8 segments per episode, 4096 tokens per step and 245 steps like the miniature."""
    from stuffed_mamba.sweep.recipe import resolved_config

    recipe, base = load_sweep(ROOT / f"recipes/sweeps/bptt_{bptt}_cpu.yaml")
    cells = expand(recipe, base)
    assert [c.name for c in cells] == ["N64_T64", "N64_T128"]
    for cell in cells:
        cfg = resolved_config(base, cell.overrides)
        assert cfg.optim.bptt == bptt and cfg.optim.optimizer_step == "episode" and cfg.data.segments == 8
        assert cfg.data.batch_size * 8 * cell.train_length == 4096 and cell.max_steps == 245
