"""`stuffed-mamba doctor RECIPE [key=value ...]`: one line per check, a broken piece is a named
failing line with its reason (never a traceback), exit 1 if any check fails (issue 11, acceptance 9)."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest

from stuffed_mamba.cli import main
from stuffed_mamba.cli.doctor import CHECK_NAMES
from stuffed_mamba.training.doctor import CHECKS, run_checks

FAST = ["--skip", "fit", "--skip", "collective"]  # the two checks that start processes


def _table(out: str) -> dict[str, tuple[str, str]]:
    """check name -> (status, detail) from the printed table."""
    rows = {}
    for line in out.splitlines():
        parts = line.split(None, 3)
        if len(parts) >= 3 and parts[0] in CHECK_NAMES and parts[1] in ("ok", "FAIL", "skip"):
            rows[parts[0]] = (parts[1], parts[3] if len(parts) > 3 else "")
    return rows


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again when we return: connections are refused


def test_the_cli_lists_the_checks_it_runs():
    assert tuple(name for name, _ in CHECKS) == CHECK_NAMES


def test_broken_pieces_are_named_failing_lines(capsys):
    port = _closed_port()
    rc = main(
        [
            "doctor",
            "recipes/tiny_cpu.yaml",
            "data.tokenizer=/nonexistent/tokenizer.json",
            f"data.source=http://127.0.0.1:{port}",
            "data.listing=en.txt",
            "model.backend=mamba_ssm",
            *FAST,
        ]
    )
    out, err = capsys.readouterr()
    rows = _table(out)
    assert list(rows) == list(CHECK_NAMES), out
    assert rows["recipe"][0] == "ok"
    assert rows["tokenizer"] == (
        "FAIL",
        "data.tokenizer=/nonexistent/tokenizer.json: tokenizer file '/nonexistent/tokenizer.json' not found",
    )
    assert rows["data"][0] == "FAIL" and f"127.0.0.1:{port}" in rows["data"][1] and "refused" in rows["data"][1]
    assert rows["kernels"][0] == "FAIL" and "bash scripts/install.sh cuda" in rows["kernels"][1]
    assert rows["init_from"] == ("skip", "absent: the recipe trains from scratch")
    assert rows["fit"] == ("skip", "skipped on request (--skip)")
    assert rows["memory"] == ("skip", "needs the tokenizer check to pass")
    assert rc == 1 and err.strip() == "stuffed-mamba doctor: 3 check(s) failed: tokenizer, data, kernels"
    assert "Traceback" not in out + err


def test_an_invalid_recipe_fails_first_and_the_rest_is_skipped():
    results = run_checks("recipes/tiny_cpu.yaml", ["optim.bogus=1"])
    assert [(r.name, r.status) for r in results][:2] == [("recipe", "FAIL"), ("tokenizer", "skip")]
    assert "unknown recipe key 'optim.bogus'" in results[0].detail
    assert all(r.status == "skip" and r.detail == "needs the recipe check to pass" for r in results[1:])


def test_a_missing_init_from_is_one_line():
    results = {
        r.name: r
        for r in run_checks(
            "recipes/tiny_cpu.yaml", ["model.init_from=/nonexistent/ckpt"], skip=("fit", "collective", "data")
        )
    }
    assert results["init_from"].status == "FAIL"
    assert (
        results["init_from"].detail.startswith("model.init_from: ")
        and "/nonexistent/ckpt" in results["init_from"].detail
    )
    assert results["memory"].detail == "needs the init_from check to pass"


def test_memory_compares_the_estimate_with_this_machine():
    results = {r.name: r for r in run_checks("recipes/tiny_cpu.yaml", [], skip=("fit", "collective", "data"))}
    assert results["memory"].status == "ok" and "available for 1 CPU rank(s)" in results["memory"].detail
    # a recipe asking for GPUs on a machine without them: nothing to compare with, said so
    results = {
        r.name: r
        for r in run_checks("recipes/tiny_cpu.yaml", ["trainer.accelerator=gpu"], skip=("fit", "collective", "data"))
    }
    if results["memory"].status == "skip":
        assert results["memory"].detail.startswith("no CUDA device here to compare with: needs ~")


@pytest.mark.slow
def test_doctor_passes_on_tiny_cpu():
    """The whole preflight on the embedded recipe: every check passes or is skipped with its reason;
    the fit check trained, saved, resumed and read its checkpoint back."""
    r = subprocess.run(
        [sys.executable, "-m", "stuffed_mamba", "doctor", "recipes/tiny_cpu.yaml"],
        capture_output=True,
        text=True,
        timeout=1200,
    )
    rows = _table(r.stdout)
    assert r.returncode == 0, r.stdout + r.stderr
    assert list(rows) == list(CHECK_NAMES)
    assert {name for name, (status, _) in rows.items() if status == "skip"} == {"init_from", "kernels"}
    assert "gloo: 2 rank(s) all-reduced" in rows["collective"][1]
    assert "saved, resumed, read back at step 4" in rows["fit"][1]


@pytest.mark.slow
def test_doctor_on_the_370m_recipe_with_cpu_overrides():
    """The 256K recipe here: its hub tokenizer, its remote source, its hub checkpoint and its
    kernels are not available on this machine (each a named failing line); DeepSpeed needs CUDA,
    so the tiny fit runs under DDP on 2 CPU processes in bf16-mixed and says so."""
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "stuffed_mamba",
            "doctor",
            "recipes/mamba2_370m_256k.yaml",
            "trainer.accelerator=cpu",
            "trainer.devices=2",
            "data.timeout_s=5",
        ],
        capture_output=True,
        text=True,
        timeout=1200,
        env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"},
    )
    rows = _table(r.stdout)
    print(r.stdout)
    assert list(rows) == list(CHECK_NAMES), r.stdout + r.stderr
    assert r.returncode == 1 and "Traceback" not in r.stdout + r.stderr
    assert rows["recipe"][0] == "ok" and rows["collective"][0] == "ok"
    assert rows["kernels"][0] == "FAIL" and "bash scripts/install.sh cuda" in rows["kernels"][1]
    assert rows["fit"][0] == "ok", rows["fit"]
    assert "DeepSpeed needs CUDA" in rows["fit"][1] and "ddp, bf16-mixed" in rows["fit"][1]


@pytest.mark.parametrize(
    "kw",
    [
        dict(d_model=32, n_layer=2, d_state=16, headdim=16, vocab_size=1000),
        dict(d_model=64, n_layer=3, d_state=8, headdim=16, ngroups=2, vocab_size=77, tie_embeddings=False),
    ],
)
def test_the_memory_estimate_counts_the_models_parameters(kw):
    from stuffed_mamba.analysis.memory import count_parameters
    from stuffed_mamba.model import Mamba2Config, Mamba2LM
    from stuffed_mamba.training.config import load_recipe
    from stuffed_mamba.training.doctor.memory import recipe_memory

    config = Mamba2Config(**kw)
    n = Mamba2LM(config).num_parameters()
    assert count_parameters(config) == n
    cfg = load_recipe("recipes/tiny_cpu.yaml", ["data.batch_size=1", "data.train_length=1"])
    estimate = recipe_memory(cfg, config)
    assert estimate.parameters == n
    assert estimate.total >= 16 * n  # DDP: weights, gradients and AdamW's moments, 16 bytes per parameter


def test_importable_kernels_on_a_cpu_are_a_failing_line(monkeypatch):
    """After the kernel tests' shims (or with a CPU-only mamba-ssm install) the backend imports,
    but its Triton kernels cannot run on a CPU outside the interpreter: a named line, not a crash."""
    import stuffed_mamba.ops

    monkeypatch.setattr(stuffed_mamba.ops, "get_backend", lambda name: object())
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    results = {
        r.name: r
        for r in run_checks(
            "recipes/tiny_cpu.yaml", ["model.backend=mamba_ssm"], skip=("fit", "collective", "data", "memory")
        )
    }
    assert results["kernels"].status == "FAIL"
    assert results["kernels"].detail.startswith("mamba_ssm kernels need a CUDA GPU")
