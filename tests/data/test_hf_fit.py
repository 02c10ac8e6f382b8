"""Acceptance 3 of issue 15: `fit recipes/tiny_cpu.yaml data.source=hf://parquet data.hf_data_files=...`
trains through the real pipeline, and stop + resume is bit-exact (weights, optimiser, losses, every
lane's data position), as tests/training/test_resume.py checks for RedPajama-V2."""

from __future__ import annotations

import pytest

from stuffed_mamba.training.fit import fit
from tests.training.common import load_ckpt, scalars, tiny_recipe
from tests.training.test_resume import assert_same_checkpoint

from .hf_corpus import sample_as_parquet


@pytest.fixture(scope="module")
def sample_parquet(tmp_path_factory):
    return sample_as_parquet(tmp_path_factory.mktemp("sample_parquet"))


def run(run_dir, files, *overrides):
    data = ["data.source=hf://parquet", f"data.hf_data_files={files}", "data.tokenizer=data/sample/tokenizer.json",
            "data.min_doc_tokens=1024", "data.train_length=32"]  # fmt: skip
    return fit(tiny_recipe(run_dir, *data, *overrides), loader_factory=None, log=lambda s: None)


@pytest.mark.slow  # ~35 s: three short fits
def test_fit_on_hf_parquet_resumes_bit_exactly(tmp_path, sample_parquet):
    straight = run(tmp_path / "straight", sample_parquet, "trainer.max_steps=12")
    run(tmp_path / "split", sample_parquet, "trainer.max_steps=6")
    half = load_ckpt(tmp_path / "split/checkpoints/last.ckpt")
    rows = _find(half["data_state_per_rank"][0], "rows")  # the pipeline's own per-lane state
    assert sorted(rows) == ["0", "1"] and all(r["stream"]["counters"]["kept"] > 0 for r in rows.values())
    run(tmp_path / "split", sample_parquet, "trainer.max_steps=12", "run.resume=auto")
    assert straight.global_step == 12 and straight.episodes == 4
    a = load_ckpt(tmp_path / "straight/checkpoints/last.ckpt")
    b = load_ckpt(tmp_path / "split/checkpoints/last.ckpt")
    assert_same_checkpoint(a, b)
    la, lb = scalars(tmp_path / "straight", "loss"), scalars(tmp_path / "split", "loss")
    assert la and la == lb


def _find(d, key):
    """The value of `key` somewhere inside nested dicts (the loader's state nests the dataset's)."""
    if isinstance(d, dict):
        if key in d:
            return d[key]
        for v in d.values():
            found = _find(v, key)
            if found is not None:
                return found
    return None
