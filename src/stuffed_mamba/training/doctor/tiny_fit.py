"""The doctor's `fit` check: a tiny model trained by real `stuffed-mamba fit` processes with the
recipe's strategy, precision and backend on the available devices (one episode, a checkpoint,
`run.resume=auto` for the second), then the checkpoint read back as `eval` reads it. What each
process did is read from the `fit_result.json` it wrote, not from its printed text."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

from stuffed_mamba.errors import first_line
from stuffed_mamba.training.doctor.context import TINY_MODEL, Context, Fail, Warn, device_count
from stuffed_mamba.training.result import FitResult, read_result

FIT_SEGMENTS, FIT_LENGTH = 2, 32
FIT_TIMEOUT_S = 900


def check_fit(ctx: Context) -> str:
    ctx.need("recipe")
    cfg = ctx.cfg
    t = cfg.trainer
    strategy, substituted = t.strategy, []
    if ctx.cuda:
        accelerator, devices = "gpu", min(device_count(t.devices, ctx.cuda), ctx.cuda)
    else:
        accelerator, devices = "cpu", min(device_count(t.devices, 2), 2)
        if t.accelerator in ("gpu", "cuda"):
            substituted.append(f"accelerator cpu for {t.accelerator} (no CUDA device): {devices} CPU process(es)")
        if strategy == "deepspeed":
            strategy = "ddp"
            substituted.append("strategy ddp for deepspeed (DeepSpeed needs CUDA: Lightning refuses a CPU accelerator)")
    if strategy == "auto" and devices > 1:
        strategy = "ddp"
    backend = cfg.model.backend
    if backend != "torch" and "kernels" not in ctx.passed:
        backend = "torch"
        substituted.append(f"backend torch for {cfg.model.backend} (its kernels failed above)")
    per_episode = FIT_SEGMENTS if cfg.optim.optimizer_step == "segment" else 1

    with tempfile.TemporaryDirectory(prefix="stuffed-mamba-doctor-") as tmp:
        run_dir = Path(tmp) / "run"
        tiny = _tiny_overrides(run_dir, backend, accelerator, devices, strategy, per_episode)
        base = [sys.executable, "-m", "stuffed_mamba", "fit", ctx.recipe, *ctx.overrides, *tiny]
        first = _fit(base + ["run.resume=null", f"trainer.max_steps={per_episode}"], run_dir, "first episode")
        last = run_dir / "checkpoints" / "last.ckpt"
        if not last.exists():
            raise Fail(f"first episode: no checkpoint at {last}")
        second = _fit(base + ["run.resume=auto", f"trainer.max_steps={2 * per_episode}"], run_dir, "resume")
        if second.resumed_step != first.global_step:
            raise Fail("resume: run.resume=auto did not continue from last.ckpt (it started over)")
        if second.global_step != 2 * per_episode:
            raise Fail(f"resume: ended at optimiser step {second.global_step}, expected {2 * per_episode}")
        step, kind = _eval_read(last)
    ran = (
        f"{strategy}, {t.precision}, backend {backend}: 2 episodes, loss {_loss(first)} -> {_loss(second)}; "
        f"{kind} checkpoint saved, resumed, read back at step {step}"
    )
    if substituted:
        raise Warn(f"not as the recipe asks: {'; '.join(substituted)}. Ran {ran}")
    return ran


def _tiny_overrides(run_dir: Path, backend, accelerator, devices, strategy, per_episode) -> list[str]:
    """The recipe made tiny: TINY_MODEL on the packaged sample corpus, 2 segments of FIT_LENGTH tokens."""
    import stuffed_mamba.data as data_pkg

    sample = Path(data_pkg.__file__).parent / "sample"
    return [
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


def _fit(argv: list[str], run_dir: Path, what: str) -> FitResult:
    """Run `stuffed-mamba fit` and return the FitResult it wrote into `run_dir`."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.setdefault("OMP_NUM_THREADS", "1")
    try:
        r = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=FIT_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise Fail(f"{what}: stuffed-mamba fit did not finish in {FIT_TIMEOUT_S} s") from None
    if r.returncode != 0:
        lines = [ln.strip() for ln in (r.stderr + "\n" + r.stdout).splitlines() if ln.strip()]
        errors = [ln for ln in lines if "error" in ln.lower()]
        raise Fail(f"{what}: stuffed-mamba fit exited {r.returncode}: {(errors or lines or ['no output'])[-1]}")
    result = read_result(run_dir)
    if result is None:
        raise Fail(f"{what}: stuffed-mamba fit exited 0 but wrote no {run_dir.name}/fit_result.json")
    return result


def _loss(result: FitResult) -> str:
    return "n/a" if result.final_loss is None else f"{result.final_loss:.4f}"


def _eval_read(last: Path) -> tuple[int | None, str]:
    """(step, kind) of the checkpoint `last` read as `stuffed-mamba eval` reads it; its model's
    logits must be finite."""
    import torch

    from stuffed_mamba.model.io import load_checkpoint

    try:
        loaded = load_checkpoint(last, backend="torch")
    except (FileNotFoundError, ValueError) as e:
        raise Fail(f"eval read: {first_line(e)}") from None
    with torch.no_grad():
        logits = loaded.model(torch.randint(0, 64, (1, 19))).logits
    if not torch.isfinite(logits).all():
        raise Fail("eval read: the checkpoint's model gives non-finite logits")
    return loaded.step, {"deepspeed": "DeepSpeed folder", "lightning": "Lightning file"}.get(loaded.kind, loaded.kind)
