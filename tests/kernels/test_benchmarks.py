"""benchmarks/gpu_throughput.py cannot run here (no GPU); what can be checked on a CPU is."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from stuffed_mamba.model import Mamba2Config, Mamba2LM

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_throughput.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("gpu_throughput", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("ngroups,headdim", [(1, 16), (2, 8)])
def test_flop_count_matches_torch_flop_counter(bench, ngroups, headdim):
    """The MFU numerator against PyTorch's FLOP counter on the torch backend's forward (its matmuls
    and einsums; the depthwise conv is not a matmul, so its term is added to the counter's total)."""
    from stuffed_mamba.ops.ssd import TORCH_BLOCK_LEN

    c = Mamba2Config(
        d_model=64, n_layer=2, vocab_size=1000, d_state=16, headdim=headdim, ngroups=ngroups, chunk_size=TORCH_BLOCK_LEN
    )
    model = Mamba2LM(c)
    T = 4 * TORCH_BLOCK_LEN
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.randint(0, c.vocab_size, (1, T)))
    counted = counter.get_total_flops() / T + c.n_layer * 2 * c.conv_dim * c.d_conv
    assert abs(bench.forward_flops_per_token(c) / counted - 1) < 0.01
    assert bench.train_flops_per_token(c) == 3 * bench.forward_flops_per_token(c)


def test_official_sizes_and_peak_table(bench):
    """130m/370m have the official sizes (built on the meta device); known GPUs resolve to their peak."""
    with torch.device("meta"):
        n = {name: Mamba2LM(bench.model_config(name)).num_parameters() for name in ("130m", "370m")}
    assert 125e6 < n["130m"] < 135e6 and 360e6 < n["370m"] < 380e6
    assert bench.peak_tflops("NVIDIA H100 80GB HBM3", None) == 989.0
    assert bench.peak_tflops("NVIDIA A100-SXM4-80GB", None) == 312.0
    assert bench.peak_tflops("Some GPU", None) is None
    assert bench.peak_tflops("Some GPU", 100.0) == 100.0


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU message")
def test_without_cuda_it_says_so(bench, capsys):
    assert bench.main(["--models", "130m", "--lengths", "16384"]) == 2
    assert "needs a CUDA device" in capsys.readouterr().err


def test_loop_runs_on_cpu(bench, capsys):
    """The timing loop itself (carried state, chunked loss, AdamW, autocast) on a tiny model."""
    rc = bench.main(["--device", "cpu", "--models", "tiny", "--lengths", "64", "--backends", "torch", "--steps", "1"])
    out = capsys.readouterr().out
    assert rc == 0
    row = [line for line in out.splitlines() if line.startswith("tiny")]
    assert len(row) == 1 and float(row[0].split()[3]) > 0, out
