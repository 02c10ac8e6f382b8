"""Preflight checks of `stuffed-mamba doctor RECIPE [key=value ...]`: what a minute on the machine
where a job will run can show before the job spends a day finding it out.

One function per check, in this order; each returns a one-line detail or raises `Fail(reason)` /
`Skip(reason)`; `run_checks` times them and turns any other exception into a failing line with its
first line, never a traceback:

    recipe      the recipe and overrides validate (the rest is skipped if not)
    tokenizer   `data.tokenizer` loads
    data        `data.source` answers: its listing, and the first document of its first shard
    init_from   `model.init_from` loads and agrees with the recipe (or is absent)
    kernels     the recipe's backend imports and gives the torch backend's logits, final states and
                gradients on this device, on a tiny model
    collective  the process group all-reduces: NCCL on CUDA, gloo on CPU, 2 ranks (1 on one GPU)
    fit         a tiny model (2 layers, d_model 32), 2 episodes of 2 segments of 32 tokens on the
                packaged sample corpus, with the recipe's strategy, precision and backend on the
                available devices: one episode, a checkpoint, `run.resume=auto` for the second, then
                the checkpoint read back as `eval` reads it. Real `stuffed-mamba fit` processes.
    memory      free memory per device against a rough estimate of the recipe's need

Without CUDA, `trainer.strategy: deepspeed` cannot run (Lightning refuses DeepSpeed on a CPU
accelerator; the project's CPU runs of the real engine patch that in tests only, never here): the
fit check then runs the same tiny fit under DDP and says so in its detail.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

TINY_MODEL = dict(d_model=32, n_layer=2, d_state=16, headdim=16, chunk_size=16, expand=2, d_conv=4, ngroups=1)
FIT_SEGMENTS, FIT_LENGTH = 2, 32


class Fail(Exception):
    """A check that found a problem; the message is the reason (one line)."""


class Skip(Exception):
    """A check that cannot run here, or whose input failed an earlier check; the message says why."""


@dataclass
class Result:
    name: str
    status: str  # "ok" | "FAIL" | "skip"
    seconds: float
    detail: str


class Context:
    """What the checks learn and share: the recipe, the tokenizer, which checks passed."""

    def __init__(self, recipe: str, overrides: list[str]):
        self.recipe = recipe
        self.overrides = list(overrides)
        self.cfg = None
        self.tokenizer = None
        self.model_config = None  # the architecture, once known (init_from's, or the recipe's)
        self.passed: set[str] = set()

    @property
    def cuda(self) -> int:
        import torch

        return torch.cuda.device_count() if torch.cuda.is_available() else 0

    def need(self, *names: str) -> None:
        for name in names:
            if name not in self.passed:
                raise Skip(f"needs the {name} check to pass")


# ------------------------------------------------------------------------------------------ checks


def check_recipe(ctx: Context) -> str:
    from stuffed_mamba.training.config import ConfigError, load_recipe

    try:
        ctx.cfg = load_recipe(ctx.recipe, ctx.overrides)
    except ConfigError as e:
        raise Fail(str(e)) from None
    t = ctx.cfg.trainer
    return (
        f"{t.strategy}, {t.precision}, {t.accelerator} x {t.devices} x {t.num_nodes} node(s), "
        f"backend {ctx.cfg.model.backend}"
    )


def check_tokenizer(ctx: Context) -> str:
    ctx.need("recipe")
    from stuffed_mamba.data import load_tokenizer

    spec = ctx.cfg.data.tokenizer
    try:
        ctx.tokenizer = load_tokenizer(spec)
    except Exception as e:  # noqa: BLE001 - missing file, hub offline, malformed JSON
        raise Fail(f"data.tokenizer={spec}: {_first_line(e)}") from None
    return f"{spec}: {ctx.tokenizer.vocab_size:,} tokens"


def check_data(ctx: Context) -> str:
    ctx.need("recipe")
    import dataclasses

    from stuffed_mamba.data.counters import new_counters
    from stuffed_mamba.data.documents import open_documents

    # One attempt with a short wait: a preflight reports a slow source rather than waiting it out.
    d = dataclasses.replace(ctx.cfg.data, timeout_s=min(ctx.cfg.data.timeout_s, 20.0), retries=0)
    counters = new_counters()
    try:
        reader, shards = open_documents(d)
        if not shards:
            raise Fail(f"data.source={d.source}: no shards listed")
        first = next(iter(reader.open(shards[0], 0, counters)), None)
    except (Fail, Skip):
        raise
    except Exception as e:  # noqa: BLE001 - Unavailable, OSError, gzip errors, ValueError, datasets' errors
        raise Fail(f"data.source={d.source}: {_first_line(e)}") from None
    if first is None:
        why = getattr(reader, "last_error", None) or ", ".join(
            k for k, v in counters.items() if v and k.startswith("shards")
        )
        raise Fail(f"data.source={d.source}: first shard {shards[0]} gave no document ({why or 'empty'})")
    _, doc_id, text, utf8_or_outcome = first
    if text is None:
        raise Fail(f"data.source={d.source}: first document {doc_id}: {utf8_or_outcome}")
    return f"{len(shards)} shard(s); first shard {shards[0]} reads ({len(utf8_or_outcome):,}-byte first document)"


def check_init_from(ctx: Context) -> str:
    ctx.need("recipe")
    m = ctx.cfg.model
    if not m.init_from:
        raise Skip("absent: the recipe trains from scratch")
    from stuffed_mamba.data import ByteTokenizer
    from stuffed_mamba.training.config import ConfigError
    from stuffed_mamba.training.fit import build_model

    # The torch backend: the kernels are the next check's business.
    cfg = _replace(ctx.cfg, model={"backend": "torch"})
    try:
        model = build_model(cfg, ctx.tokenizer or ByteTokenizer())
    except ConfigError as e:
        raise Fail(str(e)) from None
    c = ctx.model_config = model.config
    return f"{m.init_from}: {model.num_parameters():,} parameters, d_model {c.d_model}, {c.n_layer} layers"


def check_kernels(ctx: Context) -> str:
    ctx.need("recipe")
    backend = ctx.cfg.model.backend
    if backend == "torch":
        raise Skip("the recipe uses the torch backend")
    import torch

    from stuffed_mamba.model import Mamba2Config, Mamba2LM
    from stuffed_mamba.ops import get_backend

    try:
        get_backend(backend)
    except ImportError as e:
        raise Fail(_first_line(e)) from None
    if not ctx.cuda and os.environ.get("TRITON_INTERPRET") != "1":
        # The Triton kernels compile for a GPU; on a CPU only the interpreter runs them (the tests' way).
        raise Fail(
            f"{backend} kernels need a CUDA GPU: run the doctor on a GPU node (installed there with "
            "bash scripts/install.sh cuda), or use model.backend=torch on a CPU"
        )
    device = torch.device("cuda" if ctx.cuda else "cpu")
    torch.manual_seed(0)
    ref = Mamba2LM(Mamba2Config(**TINY_MODEL, vocab_size=64), backend="torch").to(device)
    kern = Mamba2LM(Mamba2Config(**TINY_MODEL, vocab_size=64), backend=backend).to(device)
    kern.load_state_dict(ref.state_dict())
    ids = torch.randint(0, 64, (2, 37), device=device)  # not a multiple of the chunk
    worst, n = 0.0, 0
    outs = []
    for model in (ref, kern):
        out = model(ids)
        loss = out.logits.float().square().mean() + sum(s.float().square().mean() for s in _state_tensors(out.state))
        loss.backward()
        grads = [p.grad.detach().float() for p in model.parameters()]
        outs.append([out.logits.detach().float(), *(s.detach().float() for s in _state_tensors(out.state)), *grads])
    for a, b in zip(outs[1], outs[0], strict=True):
        worst = max(worst, ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item())
        n += 1
    # 1e-2: mamba_ssm's tl.dot uses TF32 for fp32 operands on tensor cores (docs/kernels.md)
    if not worst < 1e-2:
        raise Fail(f"{backend} differs from the torch backend on {device}: worst relative error {worst:.1e}")
    return f"{backend} = torch on {device}: logits, states, gradients; worst rel. error {worst:.1e} ({n} tensors)"


def check_collective(ctx: Context) -> str:
    ctx.need("recipe")
    import torch.multiprocessing as mp

    backend = "nccl" if ctx.cuda else "gloo"
    world = min(2, ctx.cuda) if ctx.cuda else 2
    port = _free_port()
    errors = mp.get_context("spawn").SimpleQueue()
    try:
        mp.start_processes(
            _all_reduce, args=(world, backend, port, errors), nprocs=world, join=True, start_method="spawn"
        )
    except Exception as e:  # noqa: BLE001 - a rank's error arrives as ProcessRaisedException
        reason = errors.get() if not errors.empty() else _first_line(e)
        raise Fail(f"{backend}, {world} rank(s): {reason}") from None
    return f"{backend}: {world} rank(s) all-reduced"


def check_fit(ctx: Context) -> str:
    ctx.need("recipe")
    cfg = ctx.cfg
    t = cfg.trainer
    strategy, notes = t.strategy, []
    if ctx.cuda:
        accelerator, devices = "gpu", min(_count(t.devices, ctx.cuda), ctx.cuda)
    else:
        accelerator, devices = "cpu", min(_count(t.devices, 2), 2)
        notes.append(f"no CUDA: {devices} CPU process(es)")
        if strategy == "deepspeed":
            strategy = "ddp"
            notes.append("DeepSpeed needs CUDA (Lightning refuses a CPU accelerator): ran under ddp instead")
    if strategy == "auto" and devices > 1:
        strategy = "ddp"
    backend = cfg.model.backend
    if backend != "torch" and "kernels" not in ctx.passed:
        backend = "torch"
        notes.append(f"torch backend ({cfg.model.backend} kernels unavailable, see above)")
    per_episode = FIT_SEGMENTS if cfg.optim.optimizer_step == "segment" else 1

    import stuffed_mamba.data as data_pkg

    sample = Path(data_pkg.__file__).parent / "sample"
    with tempfile.TemporaryDirectory(prefix="stuffed-mamba-doctor-") as tmp:
        run_dir = Path(tmp) / "run"
        tiny = [
            *(f"model.{k}={v}" for k, v in TINY_MODEL.items()),
            "model.init_from=null",
            "model.vocab_size=null",
            f"model.backend={backend}",
            f"data.source={sample}",
            "data.listing=null",
            f"data.tokenizer={sample / 'tokenizer.json'}",
            "data.min_doc_tokens=256",
            f"data.train_length={FIT_LENGTH}",
            f"data.segments={FIT_SEGMENTS}",
            "data.batch_size=1",
            "data.num_workers=0",
            "data.epochs=null",
            "optim.total_steps=100",
            "optim.warmup_steps=1",
            f"trainer.accelerator={accelerator}",
            f"trainer.devices={devices}",
            "trainer.num_nodes=1",
            f"trainer.strategy={strategy}",
            "trainer.enable_progress_bar=false",
            "probes.enabled=false",
            f"run.dir={run_dir}",
            f"run.checkpoint_every_n_steps={per_episode}",
            "run.keep_every_n_steps=null",
            "run.overwrite=true",
            "run.requeue_on_signal=false",
        ]
        base = [sys.executable, "-m", "stuffed_mamba", "fit", ctx.recipe, *ctx.overrides, *tiny]
        first = _fit(base + ["run.resume=null", f"trainer.max_steps={per_episode}"], "first episode")
        last = run_dir / "checkpoints" / "last.ckpt"
        if not last.exists():
            raise Fail(f"first episode: no checkpoint at {last}")
        second = _fit(base + ["run.resume=auto", f"trainer.max_steps={2 * per_episode}"], "resume")
        if not re.search(r"^resume\s+\S*last\.ckpt", second, re.M):
            raise Fail("resume: run.resume=auto did not continue from last.ckpt (it started over)")
        steps = _done_steps(second)
        if steps != 2 * per_episode:
            raise Fail(f"resume: ended at optimiser step {steps}, expected {2 * per_episode}")
        loss_1, loss_2 = _last_loss(first), _last_loss(second)
        step, kind = _eval_read(last, backend)
    notes.insert(
        0,
        f"{strategy}, {t.precision}, backend {backend}: 2 episodes, loss {loss_1} -> {loss_2}; "
        f"{kind} checkpoint saved, resumed, read back at step {step}",
    )
    return "; ".join(notes)


def check_memory(ctx: Context) -> str:
    ctx.need("recipe")
    cfg = ctx.cfg
    if cfg.model.init_from:
        ctx.need("init_from")  # the architecture comes from it
    else:
        ctx.need("tokenizer")  # the vocabulary does
        from stuffed_mamba.model import Mamba2Config
        from stuffed_mamba.training.config import mamba2_overrides

        fields = mamba2_overrides(cfg.model)
        fields.pop("A_init_range", None)
        fields.setdefault("vocab_size", ctx.tokenizer.vocab_size)
        ctx.model_config = Mamba2Config(**fields)
    gpu = cfg.trainer.accelerator in ("gpu", "cuda") or (cfg.trainer.accelerator == "auto" and ctx.cuda)
    need, parts = estimate_need_bytes(cfg, ctx.model_config)
    gib = 1 << 30
    if gpu:
        if not ctx.cuda:
            raise Skip(f"no CUDA device here to compare with: needs ~{need / gib:.1f} GiB per GPU ({parts})")
        import torch

        free = min(torch.cuda.mem_get_info(i)[0] for i in range(ctx.cuda))
        where = f"free {free / gib:.1f} GiB on the emptiest of {ctx.cuda} GPU(s)"
    else:
        ranks = _count(cfg.trainer.devices, 1)
        need *= ranks  # the ranks share this machine's memory
        free = _mem_available()
        where = f"{free / gib:.1f} GiB available for {ranks} CPU rank(s)"
    text = f"needs ~{need / gib:.1f} GiB ({parts}); {where}"
    if need > free:
        raise Fail(text)
    return text


CHECKS: list[tuple[str, Callable[[Context], str]]] = [
    ("recipe", check_recipe),
    ("tokenizer", check_tokenizer),
    ("data", check_data),
    ("init_from", check_init_from),
    ("kernels", check_kernels),
    ("collective", check_collective),
    ("fit", check_fit),
    ("memory", check_memory),
]


def run_checks(
    recipe: str, overrides: list[str], *, skip: tuple[str, ...] = (), on_result: Callable[[Result], None] | None = None
) -> list[Result]:
    ctx = Context(recipe, overrides)
    results = []
    for name, check in CHECKS:
        t0 = time.perf_counter()
        try:
            if name in skip:
                raise Skip("skipped on request (--skip)")
            status, detail = "ok", check(ctx)
            ctx.passed.add(name)
        except Skip as e:
            status, detail = "skip", str(e)
        except Fail as e:
            status, detail = "FAIL", str(e)
        except Exception as e:  # noqa: BLE001 - a check's own bug or an unforeseen error: still one line
            status, detail = "FAIL", f"{type(e).__name__}: {_first_line(e)}"
        results.append(Result(name, status, time.perf_counter() - t0, detail))
        if on_result is not None:
            on_result(results[-1])
    return results


# ------------------------------------------------------------------------------------------ memory


def estimate_need_bytes(cfg, c) -> tuple[int, str]:
    """A rough per-device estimate (bytes) of training memory for the recipe `cfg` and the
    architecture `c` (a Mamba2Config), and what it is made of.

    Per parameter (fp32 under every strategy and precision, docs/training.md "Precision"): DDP
    4 (weights) + 4 (gradients) + 8 (AdamW's moments) bytes; DeepSpeed the same plus ZeRO's fp32
    copy of each rank's partition (4), the moments and that copy partitioned over the
    data-parallel ranks from ZeRO-1 on, the gradients from ZeRO-2 on, the weights at ZeRO-3.
    Activations of one segment: with per-layer checkpointing, each layer's input
    plus one layer's internals (~8 x d_inner per token) and its chunk states; without, every
    layer's. Plus one 4096-token chunk of fp32 logits and their gradient. Not counted: allocator
    fragmentation, CUDA context, communication buffers (DeepSpeed's buckets).
    """
    m = cfg.model
    P = count_parameters(c)
    t = cfg.trainer
    ranks = _count(t.devices, 1) * t.num_nodes
    bf16 = str(t.precision).startswith("bf16")
    if t.strategy == "deepspeed":
        stage = t.deepspeed.stage
        per_param = 4 / (ranks if stage >= 3 else 1) + 4 / (ranks if stage >= 2 else 1) + 12 / ranks
    else:
        per_param = 4 + 4 + 8
    states = P * per_param
    a = 2 if bf16 else 4
    tokens = cfg.data.batch_size * cfg.data.train_length
    one_layer = (
        tokens * (8 * c.d_inner + c.d_in_proj) * a + tokens // c.chunk_size * c.nheads * c.headdim * c.d_state * 4
    )
    stored = tokens * c.d_model * a * c.n_layer
    acts = stored + one_layer if m.activation_checkpointing else c.n_layer * one_layer + stored
    logits = 4096 * c.vocab_size_padded * 4 * 3
    need = int(states + acts + logits)
    gib = 1 << 30
    parts = (
        f"{P / 1e6:.0f}M params: weights+grads+optimizer {states / gib:.1f} GiB, "
        f"activations {(acts + logits) / gib:.1f} GiB; estimate"
    )
    return need, parts


def count_parameters(c) -> int:
    """Parameters of Mamba2LM(c) without building it (the 780M model would take seconds and 3 GB)."""
    per_layer = (
        c.d_model * c.d_in_proj  # in_proj
        + c.conv_dim * (c.d_conv + 1)  # conv1d weight and bias
        + 3 * c.nheads  # dt_bias, A_log, D
        + c.d_inner  # gated norm
        + c.d_inner * c.d_model  # out_proj
        + c.d_model
    )  # the block's norm
    head = 0 if c.tie_embeddings else c.vocab_size_padded * c.d_model
    return c.vocab_size_padded * c.d_model + c.n_layer * per_layer + c.d_model + head


def _mem_available() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


# ------------------------------------------------------------------------------------------ helpers


def _all_reduce(rank: int, world: int, backend: str, port: int, errors) -> None:
    import datetime

    import torch
    import torch.distributed as dist

    try:
        dist.init_process_group(
            backend,
            init_method=f"tcp://127.0.0.1:{port}",
            rank=rank,
            world_size=world,
            timeout=datetime.timedelta(seconds=60),
        )
        device = torch.device("cuda", rank) if backend == "nccl" else torch.device("cpu")
        x = torch.full((4,), float(rank + 1), device=device)
        dist.all_reduce(x)
        expected = world * (world + 1) / 2
        if not torch.allclose(x.cpu(), torch.full((4,), expected)):
            raise RuntimeError(f"all_reduce gave {x.tolist()}, expected {expected}")
        dist.destroy_process_group()
    except Exception as e:
        errors.put(_first_line(e))
        raise


def _fit(argv: list[str], what: str) -> str:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.setdefault("OMP_NUM_THREADS", "1")
    try:
        r = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=900)
    except subprocess.TimeoutExpired:
        raise Fail(f"{what}: stuffed-mamba fit did not finish in 900 s") from None
    if r.returncode != 0:
        lines = [ln.strip() for ln in (r.stderr + "\n" + r.stdout).splitlines() if ln.strip()]
        errors = [ln for ln in lines if "error" in ln.lower() or "Error" in ln]
        raise Fail(f"{what}: stuffed-mamba fit exited {r.returncode}: {(errors or lines or ['no output'])[-1]}")
    return r.stdout


def _done_steps(stdout: str) -> int | None:
    m = re.search(r"^done: (\d+) optimiser steps", stdout, re.M)
    return int(m.group(1)) if m else None


def _last_loss(stdout: str) -> str:
    m = re.search(r"last episode mean loss (\S+?);", stdout)
    return m.group(1) if m else "n/a"


def _eval_read(last: Path, backend: str) -> tuple[int | None, str]:
    import torch

    from stuffed_mamba.probes.checkpoint import load_checkpoint

    try:
        loaded = load_checkpoint(last, backend="torch")
    except (FileNotFoundError, ValueError) as e:
        raise Fail(f"eval read: {_first_line(e)}") from None
    with torch.no_grad():
        logits = loaded.model(torch.randint(0, 64, (1, 19))).logits
    if not torch.isfinite(logits).all():
        raise Fail("eval read: the checkpoint's model gives non-finite logits")
    return loaded.step, {"deepspeed": "DeepSpeed folder", "lightning": "Lightning file"}.get(loaded.kind, loaded.kind)


def _state_tensors(state) -> list:
    out = []
    for layer in state.layers:
        out += [layer.conv, layer.ssm]
    return out


def _replace(cfg, **sections):
    import copy

    cfg = copy.deepcopy(cfg)
    for section, values in sections.items():
        for k, v in values.items():
            setattr(getattr(cfg, section), k, v)
    return cfg


def _count(devices, default: int) -> int:
    try:
        n = int(devices)
    except (TypeError, ValueError):
        return default  # "auto"
    return n if n > 0 else default


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _first_line(e: BaseException) -> str:
    text = " ".join(str(e).split()) if "\n" in str(e).strip()[:200] and len(str(e)) < 300 else str(e).strip()
    text = text.splitlines()[0] if text else ""
    return text or type(e).__name__
