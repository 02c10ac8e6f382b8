"""Small builders shared by the training tests: a tiny model, a bare trainer, a tiny recipe."""

from __future__ import annotations

import lightning as L

from stuffed_mamba.model import Mamba2LM
from stuffed_mamba.training.config import OptimConfig, load_recipe
from stuffed_mamba.training.module import TBPTTModule
from tests import helpers

TINY_MODEL = {**helpers.TINY_ARCH, "vocab_size": 32}  # the fake loader's ids are < 32


def tiny_model(**kw) -> Mamba2LM:
    return helpers.tiny_model(0, **{"vocab_size": 32, **kw})


def tiny_module(model=None, **optim) -> TBPTTModule:
    cfg = OptimConfig(**{"lr": 3e-3, "total_steps": 100, "warmup_steps": 2, **optim})
    return TBPTTModule(model if model is not None else tiny_model(), cfg)


def bare_trainer(max_steps: int, **kw) -> L.Trainer:
    args = dict(
        max_steps=max_steps,
        max_epochs=1,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        use_distributed_sampler=False,
    )
    args.update(kw)
    return L.Trainer(**args)


def tiny_recipe(run_dir, *overrides):
    """recipes/tiny_cpu.yaml shrunk to seconds: fake-loader sized data, no probes."""
    # vocab_size from the tokenizer ("bytes": 257); the fake loader draws ids < 32
    return load_recipe("recipes/tiny_cpu.yaml", helpers.tiny_recipe_overrides(run_dir, *overrides))


def scalars(run_dir, prefix=""):
    """{tag: {step: value}} of every TensorBoard scalar under run_dir/tensorboard."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0})
    ea.Reload()
    out = {}
    for tag in ea.Tags()["scalars"]:
        if tag.startswith(prefix):
            events = ea.Scalars(tag)
            steps = [e.step for e in events]
            assert len(steps) == len(set(steps)), f"{tag} logged twice at one step"
            out[tag] = {e.step: e.value for e in events}
    return out


def load_ckpt(path):
    import torch

    return torch.load(path, map_location="cpu", weights_only=False)
