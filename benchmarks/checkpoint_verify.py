#!/usr/bin/env python3
"""What proving a checkpoint whole costs: digests in seconds per GB, and the recipes' checkpoints.

    python benchmarks/checkpoint_verify.py [--gb 1.0] [--repeat 3] [--dir /tmp]

1. Digest candidates over a file of `--gb` GB of random bytes, read in 8 MiB chunks from the page
   cache (warm: the file was just written, as a checkpoint is when it is sealed), one thread:
   zlib.crc32 (what zip's member CRCs use), hashlib sha256 / blake2b / md5, xxhash xxh64 / xxh3_128.
2. The project's path on a real torch checkpoint of about `--gb` GB (a dict of fp32 tensors written
   by torch.save): `seal_file` (hash + append the manifest), `verify_checkpoint` of the sealed file,
   the zip CRC check of an unsealed one (`ZipFile.testzip`, what earlier checkpoints get), and
   torch.save and torch.load (what a resume reads anyway) for scale.
3. The recipes' checkpoint sizes (parameters from `Mamba2Config`, `count_parameters`; fp32 weights +
   two AdamW moments = 12 bytes per parameter in a `.ckpt`; a DeepSpeed folder adds the fp32 partition
   copy: 16) and the verification time at the measured rate, against a training step's time.
   Verification runs once per start (and the seal once per save); both are linear in the
   parameters, as a step is, so their ratio does not depend on the model size.

Best of `--repeat` runs; the machine is shared, so the numbers are upper bounds of the cost.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import tempfile
import time
import zipfile
import zlib

CHUNK = 8 << 20


def best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def read_with(path: str, update) -> None:
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(view):
            update(view[:n])


def digests() -> dict:
    out = {}

    def crc32():
        state = [0]
        return lambda b: state.__setitem__(0, zlib.crc32(b, state[0]))

    out["zlib.crc32"] = crc32
    for name in ("sha256", "blake2b", "md5"):
        out[f"hashlib.{name}"] = lambda name=name: hashlib.new(name).update
    try:
        import xxhash

        out["xxhash.xxh64"] = lambda: xxhash.xxh64().update
        out["xxhash.xxh3_128"] = lambda: xxhash.xxh3_128().update
    except ImportError:
        print("xxhash not installed: its digests skipped")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--gb", type=float, default=1.0, help="size of the test files in GB (1e9 bytes)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--dir", default=tempfile.gettempdir())
    args = ap.parse_args()
    nbytes = int(args.gb * 1e9)
    gb = nbytes / 1e9

    with tempfile.TemporaryDirectory(dir=args.dir) as d:
        raw = os.path.join(d, "random.bin")
        with open(raw, "wb") as f:
            block = os.urandom(64 << 20)
            for i in range(0, nbytes, len(block)):
                f.write(block[: min(len(block), nbytes - i)])
        print(f"1. digest of {gb:.2f} GB from the page cache, one thread, best of {args.repeat} (s/GB)")
        rates = {}
        for name, make in digests().items():
            rates[name] = best(lambda make=make: read_with(raw, make()), args.repeat) / gb
            print(f"   {name:18s} {rates[name]:7.3f} s/GB  ({1 / rates[name]:5.2f} GB/s)")
        os.unlink(raw)
        verify_rate = checkpoint_path(d, nbytes, args.repeat)
    recipes(verify_rate)


def checkpoint_path(d: str, nbytes: int, repeat: int) -> float:
    import torch

    from stuffed_mamba.model import integrity

    n = nbytes // 4 // 16
    state = {f"t{i}": torch.randn(n) for i in range(16)}
    path = os.path.join(d, "last.ckpt")
    t_save = best(lambda: torch.save(state, path), 1)
    size = os.path.getsize(path) / 1e9
    print(f"2. a torch checkpoint of {size:.2f} GB (16 fp32 tensors), best of {repeat} (s/GB)")
    t_crc = best(lambda: zipfile.ZipFile(path).testzip(), repeat)
    t_seal = best(lambda: integrity.seal_file(path, 0), 1)

    def verify():
        integrity._verified.clear()  # no memo: the whole file is read and hashed each time
        integrity.verify_checkpoint(path)

    t_verify = best(verify, repeat)
    t_load = best(lambda: torch.load(path, map_location="cpu"), 1)
    for name, t in (
        ("torch.save", t_save),
        ("torch.load", t_load),
        ("seal_file", t_seal),
        ("verify_checkpoint", t_verify),
        ("zip CRCs (testzip)", t_crc),
    ):
        print(f"   {name:18s} {t / size:7.3f} s/GB")
    return t_verify / size


def recipes(rate: float) -> None:
    from stuffed_mamba.analysis.memory import count_parameters
    from stuffed_mamba.model.config import OFFICIAL_SIZES, Mamba2Config

    # tiny_cpu: measured 600 steps + probes in 140 s wall on this machine (docs/training.md)
    rows = [("tiny_cpu", Mamba2Config(d_model=128, n_layer=8, d_state=32, headdim=32, vocab_size=1024), 140 / 600)]
    rows += [(f"mamba2_{k}_256k", Mamba2Config(**v), None) for k, v in OFFICIAL_SIZES.items()]
    print(f"3. verification at {rate:.3f} s/GB (this machine, one reader); seal costs the same once per save")
    print("   recipe            params   .ckpt GB  verify s  DeepSpeed GB  verify s  step s (tiny_cpu: measured)")
    for name, cfg, step in rows:
        p = count_parameters(cfg)
        f, ds = 12 * p / 1e9, 16 * p / 1e9
        step_s = f"{step:.3f}" if step else "-"
        print(f"   {name:16s} {p / 1e6:7.1f}M {f:9.3f} {f * rate:9.3f} {ds:12.3f} {ds * rate:9.3f}  {step_s}")
    # Per step of the 256K recipes: 524,288 tokens, >= 6 N tokens FLOPs (the SSD's own work on top).
    print(
        "   256K recipes: a step is >= 6 x params x 524,288 FLOPs; verification is 16 bytes per parameter\n"
        f"   at {rate:.3f} s/GB, so verify / step <= {16 * rate / 1e9:.2e} x GPU FLOP/s / (6 x 524,288): "
        f"{16 * rate / 1e9 * 8 * 400e12 / (6 * 524288):.2f} steps on 8 GPUs at 400 TFLOP/s, once per start"
    )


if __name__ == "__main__":
    main()
