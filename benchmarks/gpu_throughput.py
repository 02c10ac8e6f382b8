#!/usr/bin/env python3
"""Training throughput on one CUDA GPU: tokens/s and model FLOPs utilisation (MFU) of Mamba-2
130m / 370m at T = 16K..256K tokens per segment, bf16, backends "mamba_ssm" and "torch".

    python benchmarks/gpu_throughput.py [--models 130m,370m] [--lengths 16384,32768,65536,131072,262144]
        [--backends mamba_ssm,torch] [--steps 3] [--precision bf16-mixed|bf16-true]
        [--no-checkpointing] [--peak-tflops X]

One step is what training does per segment: forward from the carried state with the chunked loss,
backward, AdamW step, state detached and carried (batch 1, official vocabulary). Per configuration:
one warm-up step (Triton autotuning, allocator), then --steps timed steps between
`torch.cuda.synchronize()` calls. Out-of-memory is reported in the table, not fatal.

MFU = model FLOPs per token x tokens/s / the GPU's peak dense bf16 FLOP/s. Model FLOPs per token
(`train_flops_per_token`) count a training step as 3x the forward pass (backward = 2x forward),
without the recomputation that activation checkpointing adds (PaLM's convention), with:
  projections  2 * (d*d_in_proj + d_inner*d) per layer, the short conv 2*conv_dim*k per layer,
  SSD (chunk Q)  2*Q*G*N (C B^T within a chunk) + 2*Q*H*P (its product with X) + 4*H*P*N
                 (chunk states B^T X and state outputs C h) per layer,
  LM head      2 * d * V.
The GPU's peak comes from a small table by device name or from --peak-tflops.

The "torch" column is the reference of the same run; the last column is mamba_ssm/torch.
Needs CUDA and `bash scripts/install.sh cuda`: it has not been run on this project's CPU-only CI
machine; it is written to be correct by construction (its FLOP count is checked in
tests/kernels/test_benchmarks.py, and `--device cpu` runs the same loop on a tiny model).
"""

from __future__ import annotations

import argparse
import sys
import time

# Peak dense bf16 tensor-core FLOP/s (no sparsity), from NVIDIA's datasheets, by device-name substring.
PEAK_BF16_TFLOPS = {
    "H200": 989.0,
    "H100 SXM": 989.0,
    "H100 80GB HBM3": 989.0,
    "H100 NVL": 835.0,
    "H100 PCIe": 756.0,
    "GH200": 989.0,
    "A100": 312.0,
    "L40S": 362.0,
    "L4": 121.0,
    "A10G": 70.0,
    "A10": 125.0,
    "RTX 4090": 165.0,
    "RTX 3090": 71.0,
}

# The official checkpoints' architectures (state-spaces/mamba2-130m, -370m, config.json).
MODELS = {
    "130m": dict(d_model=768, n_layer=24),
    "370m": dict(d_model=1024, n_layer=48),
    "780m": dict(d_model=1536, n_layer=48),
    "tiny": dict(d_model=64, n_layer=2, d_state=16, headdim=16, chunk_size=64),  # for --device cpu
}


def model_config(name: str):
    from stuffed_mamba.model import Mamba2Config

    return Mamba2Config(vocab_size=50277, **MODELS[name])


def forward_flops_per_token(c) -> float:
    """Forward FLOPs per token of Mamba2LM (matmuls and the SSD; norms and activations ignored)."""
    proj = 2 * (c.d_model * c.d_in_proj + c.d_inner * c.d_model)
    conv = 2 * c.conv_dim * c.d_conv
    Q, G, N, H, P = c.chunk_size, c.ngroups, c.d_state, c.nheads, c.headdim
    ssd = 2 * Q * G * N + 2 * Q * H * P + 4 * H * P * N
    return c.n_layer * (proj + conv + ssd) + 2 * c.d_model * c.vocab_size_padded


def train_flops_per_token(c) -> float:
    return 3 * forward_flops_per_token(c)


def peak_tflops(device_name: str, override: float | None) -> float | None:
    if override:
        return override
    for key, value in PEAK_BF16_TFLOPS.items():
        if key in device_name:
            return value
    return None


def measure(name: str, backend: str, T: int, args, device) -> dict:
    """tokens/s and peak memory of `args.steps` training steps on one segment length."""
    import torch

    from stuffed_mamba.model import Mamba2LM, ModelState

    cuda = device.type == "cuda"
    c = model_config(name)
    model = Mamba2LM(c, backend=backend).to(device)
    if args.precision == "bf16-true":
        model.to(torch.bfloat16)
    model.gradient_checkpointing = not args.no_checkpointing
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=cuda)
    ids = torch.randint(0, c.vocab_size, (1, T), device=device)
    labels = torch.randint(0, c.vocab_size, (1, T), device=device)
    conv_dtype = torch.bfloat16 if args.precision == "bf16-true" else torch.float32
    state = ModelState.zeros(c, 1, device=device, dtype=conv_dtype)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.precision == "bf16-mixed")

    def step(state):
        with autocast:
            out = model(ids, state=state, labels=labels)
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return out.state.detach()

    sync = torch.cuda.synchronize if cuda else (lambda: None)
    try:
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        state = step(state)  # warm-up: autotuning, allocator
        sync()
        t0 = time.perf_counter()
        for _ in range(args.steps):
            state = step(state)
        sync()
        dt = time.perf_counter() - t0
    except torch.cuda.OutOfMemoryError:
        return {"error": "OOM"}
    finally:
        del model, opt
        if cuda:
            torch.cuda.empty_cache()
    peak_gb = torch.cuda.max_memory_allocated() / 1024**3 if cuda else None
    return {"tokens_per_s": args.steps * T / dt, "peak_gb": peak_gb}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="130m,370m")
    p.add_argument("--lengths", default="16384,32768,65536,131072,262144")
    p.add_argument("--backends", default="mamba_ssm,torch")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument(
        "--precision",
        choices=["bf16-mixed", "bf16-true"],
        default="bf16-mixed",
        help="bf16-mixed: fp32 weights under autocast (what training runs, DeepSpeed included); "
        "bf16-true: bf16 weights (for comparison only: training refuses it)",
    )
    p.add_argument("--no-checkpointing", action="store_true", help="keep every layer's activations")
    p.add_argument("--peak-tflops", type=float, default=None, help="the GPU's peak dense bf16 TFLOP/s")
    p.add_argument("--device", default="cuda", help="cuda (the benchmark) or cpu (a smoke test of the loop)")
    args = p.parse_args(argv)

    import torch

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print(
            "gpu_throughput: needs a CUDA device (run it on a GPU node; --device cpu only smoke-tests the loop)",
            file=sys.stderr,
        )
        return 2
    backends = args.backends.split(",")
    if "mamba_ssm" in backends:
        from stuffed_mamba.ops import get_backend

        try:
            get_backend("mamba_ssm")
        except ImportError as e:
            print(f"gpu_throughput: {e}", file=sys.stderr)
            return 2

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    peak = peak_tflops(name, args.peak_tflops)
    print(
        f"device: {name}; peak bf16 {peak or '?'} TFLOP/s; {args.precision}; "
        f"checkpointing {'off' if args.no_checkpointing else 'on'}; batch 1; {args.steps} timed steps"
    )
    header = f"{'model':<6} {'T':>7} {'backend':<10} {'tokens/s':>10} {'MFU %':>6} {'peak GB':>8} {'x torch':>8}"
    print(header)
    print("-" * len(header))
    for model_name in args.models.split(","):
        flops = train_flops_per_token(model_config(model_name))
        for T in (int(t) for t in args.lengths.split(",")):
            rows = {b: measure(model_name, b, T, args, device) for b in backends}
            for b, r in rows.items():
                if "error" in r:
                    print(f"{model_name:<6} {T:>7} {b:<10} {r['error']:>10}")
                    continue
                mfu = f"{100 * flops * r['tokens_per_s'] / (peak * 1e12):>6.1f}" if peak else f"{'-':>6}"
                ref = rows.get("torch", {})
                ratio = f"{r['tokens_per_s'] / ref['tokens_per_s']:>8.2f}" if "tokens_per_s" in ref else f"{'-':>8}"
                mem = f"{r['peak_gb']:>8.1f}" if r["peak_gb"] is not None else f"{'-':>8}"
                print(f"{model_name:<6} {T:>7} {b:<10} {r['tokens_per_s']:>10.0f} {mfu} {mem} {ratio}")
    if not peak:
        print("MFU needs the GPU's peak: pass --peak-tflops")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
