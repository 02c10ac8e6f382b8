"""The doctor's checks of the recipe's own pieces: the recipe validates, its tokenizer loads, its data
source answers, its `model.init_from` loads and agrees with it."""

from __future__ import annotations

from stuffed_mamba.errors import first_line
from stuffed_mamba.training.doctor.context import Context, Fail, Skip, Warn, device_count, replaced


def check_recipe(ctx: Context) -> str:
    from stuffed_mamba.training.config import ConfigError, load_recipe

    try:
        ctx.cfg = load_recipe(ctx.recipe, ctx.overrides)
    except ConfigError as e:
        raise Fail(str(e)) from None
    t = ctx.cfg.trainer
    asks = (
        f"{t.strategy}, {t.precision}, {t.accelerator} x {t.devices} x {t.num_nodes} node(s), "
        f"backend {ctx.cfg.model.backend}"
    )
    if t.accelerator in ("gpu", "cuda"):
        if not ctx.cuda:
            raise Warn(f"valid; asks for {asks}: this machine has no CUDA device, the checks below run on the CPU")
        if device_count(t.devices, ctx.cuda) > ctx.cuda:
            raise Warn(f"valid; asks for {asks}: this machine has {ctx.cuda} GPU(s), the checks below use those")
    return f"valid: {asks}"


def _from_hub(ctx: Context, spec) -> str | None:
    """For a hub name `spec` that is no local path: None if the hub answers (or the user chose
    HF_HUB_OFFLINE), else why it does not (the cache is then read alone)."""
    from pathlib import Path

    from stuffed_mamba.model.pretrained import is_hub_name

    if not spec or not is_hub_name(spec) or Path(str(spec)).expanduser().exists():
        return None
    return ctx.hub_problem()


def _unreachable(spec, why: str) -> str:
    from huggingface_hub import constants

    return (
        f"{spec} is not in the cache ({constants.HF_HUB_CACHE}) and the hub is unreachable ({why}): "
        f"download it where there is network (hf download {spec}) or give a local path"
    )


def check_tokenizer(ctx: Context) -> str:
    ctx.need("recipe")
    from stuffed_mamba.data import load_tokenizer

    spec = ctx.cfg.data.tokenizer
    offline = _from_hub(ctx, spec)
    try:
        ctx.tokenizer = load_tokenizer(spec)
    except Exception as e:  # noqa: BLE001 - missing file, hub offline, malformed JSON
        raise Fail(f"data.tokenizer={spec}: {_unreachable(spec, offline) if offline else first_line(e)}") from None
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
        raise Fail(f"data.source={d.source}: {first_line(e)}") from None
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
    cfg = replaced(ctx.cfg, model={"backend": "torch"})
    offline = _from_hub(ctx, m.init_from)
    try:
        model = build_model(cfg, ctx.tokenizer or ByteTokenizer())
    except ConfigError as e:
        raise Fail(f"model.init_from: {_unreachable(m.init_from, offline)}" if offline else str(e)) from None
    c = ctx.model_config = model.config
    return f"{m.init_from}: {model.num_parameters():,} parameters, d_model {c.d_model}, {c.n_layer} layers"
