"""Test-only: DeepSpeed checkpoint folders written by the real engine (CPU, gloo, 2 ranks) with the
engine's own fp32 master weights beside them as the reference.

`python -m tests.training.deepspeed_folders OUT` trains a tiny Mamba2LM for two AdamW steps under
ZeRO-2 and under ZeRO-3 (bf16, so the module's weights and the fp32 master differ) and writes, for
each stage, `OUT/zero{stage}/` the way Lightning's DeepSpeedStrategy does (`engine.save_checkpoint
(dir, client_state=..., tag="checkpoint")`, the module's keys under `model.`) and
`OUT/zero{stage}_master.pt`: every parameter's full fp32 master weight, read from the live engine
with `deepspeed.utils.safe_get_full_fp32_param` (not from the checkpoint).

It drives the engine directly (not `fit`) so that ZeRO-3 folders exist whatever the training loop
does under ZeRO-3; the loss is the logits path's plain cross-entropy.
"""

from __future__ import annotations

import os
import sys

import torch

from tests.helpers import TINY_ARCH

TINY = {**TINY_ARCH, "vocab_size": 64}
STAGES = tuple(int(s) for s in os.environ.get("STAGES", "2,3").split(","))


class Holder(torch.nn.Module):
    """The LightningModule's role: the network under `model.`."""

    def __init__(self, model):
        super().__init__()
        self.model = model


def _rank(rank: int, world: int, out: str, port: int) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world),
        DS_ACCELERATOR="cpu",
    )
    torch.set_num_threads(1)
    from tests.deepspeed_cpu import apply

    apply()
    import deepspeed
    from deepspeed.utils import safe_get_full_fp32_param

    from stuffed_mamba.model import Mamba2Config, Mamba2LM

    deepspeed.init_distributed(dist_backend="gloo")
    for stage in STAGES:
        torch.manual_seed(0)
        config = Mamba2Config(**TINY)
        holder = Holder(Mamba2LM(config))
        opt = torch.optim.AdamW(holder.parameters(), lr=1e-2)
        engine, *_ = deepspeed.initialize(
            model=holder,
            optimizer=opt,
            config={
                "zero_optimization": {"stage": stage},
                "zero_allow_untested_optimizer": True,
                "train_micro_batch_size_per_gpu": 2,
                "gradient_clipping": 1.0,
                "bf16": {"enabled": True},
            },
        )
        if stage == 3:
            # The mixer reads conv1d's and norm's weights without calling those modules, where ZeRO-3
            # would not gather them: register them with the mixer (DeepSpeed's API for this case).
            for layer in engine.module.model.backbone.layers:
                m = layer.mixer
                for p in (m.conv1d.weight, m.conv1d.bias, m.norm.weight):
                    deepspeed.zero.register_external_parameter(m, p)
        g = torch.Generator().manual_seed(rank)
        for _ in range(2):
            ids = torch.randint(0, TINY["vocab_size"], (2, 37), generator=g)  # not a chunk multiple
            logits = engine.module.model(ids[:, :-1]).logits.float()
            loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten())
            engine.backward(loss)
            engine.step()
        master = {name: safe_get_full_fp32_param(p).detach().clone() for name, p in engine.module.named_parameters()}
        client = {"mamba2_config": config.to_dict(), "global_step": 2, "epoch": 0}
        engine.save_checkpoint(os.path.join(out, f"zero{stage}"), client_state=client, tag="checkpoint")
        if rank == 0:
            torch.save(master, os.path.join(out, f"zero{stage}_master.pt"))
        torch.distributed.barrier()


def main(out: str, world: int = 2) -> None:
    from tests.helpers import free_port

    port = free_port()
    torch.multiprocessing.spawn(_rank, args=(world, out, port), nprocs=world, join=True)


if __name__ == "__main__":
    main(sys.argv[1])
