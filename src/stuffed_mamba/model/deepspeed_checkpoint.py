"""A DeepSpeed checkpoint folder read as a Lightning checkpoint (the reader `model.io` uses for folders).

Under `trainer.strategy: deepspeed`, `fit` writes `last.ckpt` and `step-*.ckpt` as folders:

    latest                                              the tag of the save ("checkpoint")
    <tag>/mp_rank_00_model_states.pt                    ZeRO 1/2: the module's weights in the training
                                                        dtype + Lightning's client state
    <tag>/zero_pp_rank_R_mp_rank_00_model_states.pt     ZeRO-3: per rank, the client state (no weights)
    <tag>/[bf16_]zero_pp_rank_R_mp_rank_00_optim_states.pt  per rank: its partition of the fp32 master
                                                        weights (and the AdamW moments)

`read_deepspeed_checkpoint` returns what a Lightning `.ckpt` file holds: `state_dict` (keys
`model.*`) plus the client state (`mamba2_config`, `global_step`, ...); `read_client_state` the
client state alone, its tensors memory-mapped (what a resume needs to know). The weights are the fp32
master weights, reassembled from every rank's partition by DeepSpeed's own `zero_to_fp32` (any
stage); a ZeRO-1/2 folder whose optimizer shards were deleted falls back to the module's weights.

Every file is unpickled weights-only: DeepSpeed's reader asks for `weights_only=False`, so we force
weights-only through torch's `TORCH_FORCE_WEIGHTS_ONLY_LOAD` and allow exactly the few plain
DeepSpeed classes its shards hold (`SAFE_DEEPSPEED_GLOBALS`). A folder that needs anything else is
refused, never executed.
"""

from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path

from stuffed_mamba.errors import first_line

# What DeepSpeed 0.19 pickles into its checkpoint files besides tensors and builtins (found with
# torch.serialization.get_unsafe_globals_in_checkpoint on ZeRO 1/2/3, fp32 and bf16 folders).
SAFE_DEEPSPEED_GLOBALS = (
    "deepspeed.runtime.zero.config.ZeroStageEnum",
    "deepspeed.runtime.fp16.loss_scaler.LossScaler",
    "deepspeed.runtime.fp16.loss_scaler.DynamicLossScaler",
    "deepspeed.utils.tensor_fragment.fragment_address",
)

# DeepSpeed's own entries in the model-states file; the rest is Lightning's checkpoint dict.
_DEEPSPEED_KEYS = (
    "module",
    "buffer_names",
    "optimizer",
    "param_shapes",
    "frozen_param_shapes",
    "shared_params",
    "frozen_param_fragments",
    "lr_scheduler",
    "data_sampler",
    "random_ltd",
    "sparse_tensor_module_names",
    "csr_tensor_module_names",
    "skipped_steps",
    "global_steps",
    "global_samples",
    "dp_world_size",
    "mp_world_size",
    "checkpoint_parallel_dimensions",
    "ds_config",
    "ds_version",
)


def is_deepspeed_folder(path: str | Path) -> bool:
    return Path(path).is_dir() and (Path(path) / "latest").is_file()


def read_client_state(path: str | Path) -> dict:
    """Lightning's checkpoint dict without `state_dict` (rank 0's model-states file, memory-mapped).

    Raises ValueError (one line) for a folder that is incomplete, corrupt, or not DeepSpeed's."""
    return {k: v for k, v in _model_states(Path(path))[2].items() if k not in _DEEPSPEED_KEYS}


def read_deepspeed_checkpoint(path: str | Path) -> dict:
    """Lightning's checkpoint dict with fp32 weights from a DeepSpeed checkpoint folder.

    Raises ValueError (one line) for a folder that is incomplete, corrupt, or not DeepSpeed's.
    """
    path = Path(path)
    tag, tag_dir, client = _model_states(path)
    if any(tag_dir.glob("*optim_states.pt")):
        state_dict = _fp32_master_weights(path, tag)
    elif client["module"]:  # ZeRO 1/2 without optimizer shards: the module's weights as trained
        state_dict = dict(client["module"])
    else:
        raise ValueError(
            f"{path}: incomplete DeepSpeed checkpoint (no *optim_states.pt, and its model states "
            f"hold no weights: ZeRO-3 keeps them only in the optimizer shards)"
        )
    # Lightning < 2.1 saved the wrapper's prefix.
    state_dict = {k.removeprefix("_forward_module."): v for k, v in state_dict.items()}
    ckpt = {k: v for k, v in client.items() if k not in _DEEPSPEED_KEYS}
    ckpt["state_dict"] = state_dict
    return ckpt


def _model_states(path: Path) -> tuple[str, Path, dict]:
    """(tag, its folder, rank 0's model-states dict)."""
    if not is_deepspeed_folder(path):
        raise ValueError(f"{path} is a folder with neither config.json nor a DeepSpeed 'latest' file: not a checkpoint")
    tag = (path / "latest").read_text().strip()
    tag_dir = path / tag
    if not tag or not tag_dir.is_dir():
        raise ValueError(
            f"{path}: incomplete DeepSpeed checkpoint ('latest' names {tag!r}, which is not a folder in it)"
        )
    if not any(tag_dir.glob("*model_states.pt")):
        raise ValueError(f"{path}: incomplete DeepSpeed checkpoint (no *model_states.pt in {tag_dir.name}/)")
    # ZeRO 1/2 write one model-states file (mp_rank_00_...); ZeRO-3 one per rank (zero_pp_rank_R_...).
    main = tag_dir / "mp_rank_00_model_states.pt"
    if not main.is_file():
        main = tag_dir / "zero_pp_rank_0_mp_rank_00_model_states.pt"
    client = _load(main, path)
    if not isinstance(client, dict) or "module" not in client:
        raise ValueError(f"{path}: {main.name} is not a DeepSpeed model-states file")
    return tag, tag_dir, client


def _fp32_master_weights(path: Path, tag: str) -> dict:
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    with _weights_only(), contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        try:  # it prints its progress; a user of eval/export wants the table only
            return dict(get_fp32_state_dict_from_zero_checkpoint(str(path), tag))
        except Exception as e:  # noqa: BLE001 - missing shards, truncated files, refused globals
            raise ValueError(f"{path}: cannot read the DeepSpeed checkpoint: {first_line(e)}") from None


def _load(file: Path, folder: Path):
    import torch

    with _weights_only():
        try:
            # mmap: the bf16 module weights of ZeRO 1/2 stay on disk unless they are used
            return torch.load(file, map_location="cpu", weights_only=True, mmap=True)
        except Exception as e:  # noqa: BLE001
            raise ValueError(f"{folder}: cannot read {file.name}: {first_line(e)}") from None


@contextlib.contextmanager
def _weights_only():
    """Every torch.load inside is weights-only, with DeepSpeed's plain classes allowed."""
    import importlib

    import torch

    allowed = []
    for name in SAFE_DEEPSPEED_GLOBALS:
        module, _, attr = name.rpartition(".")
        with contextlib.suppress(ImportError, AttributeError):
            allowed.append(getattr(importlib.import_module(module), attr))
    saved = os.environ.get("TORCH_FORCE_WEIGHTS_ONLY_LOAD")
    os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"
    try:
        with torch.serialization.safe_globals(allowed):
            yield
    finally:
        if saved is None:
            os.environ.pop("TORCH_FORCE_WEIGHTS_ONLY_LOAD", None)
        else:
            os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = saved
