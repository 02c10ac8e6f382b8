"""`stuffed-mamba eval {passkey,retention,states,loss,...} --checkpoint PATH ...`: the forgetting probes on any checkpoint.

PATH is a Lightning checkpoint (`{run.dir}/checkpoints/last.ckpt`; its run's recipe gives
the tokenizer, T_train and the evaluation data), a checkpoint folder (official or
exported) or a HuggingFace hub name (OWNER/NAME). Each command prints a table and writes `DIR/<command>.json`, `DIR/<command>.txt`
and PNG plots. `--intervention` (repeatable: none, rri, longmamba:0.5, window:W) compares
training-free interventions on the same checkpoint, as in figure 4. One sub-command per
probe of the registry (`stuffed_mamba.probes.registry`); its flags are the probe's settings,
with the probe's defaults.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
import types
import typing
from pathlib import Path

from stuffed_mamba.cli import CLIError


def parse_length(text: str) -> int:
    """ "4096", "4K" (x1024), "1M" (x2^20)."""
    t = text.strip().upper()
    mult = {"K": 1 << 10, "M": 1 << 20}.get(t[-1:], 1)
    try:
        value = int(float(t[:-1] if mult > 1 else t) * mult)
    except ValueError:
        raise CLIError(f"bad length {text!r}: use tokens, e.g. 4096, 4K or 1M") from None
    if value < 1:
        raise CLIError(f"bad length {text!r}: must be >= 1")
    return value


def parse_lengths(text: str) -> list[int]:
    return [parse_length(x) for x in text.split(",") if x.strip()]


def _comma(kind):
    return lambda text: [kind(x) for x in text.split(",") if x.strip()]


def add_parser(subparsers, argv: list[str] | None = None) -> None:
    p = subparsers.add_parser(
        "eval", help="run a forgetting probe on a checkpoint", description=__doc__.split("\n\n")[0]
    )
    if argv is not None and argv[:1] != ["eval"]:
        return  # another command: the probes (and torch) need not be imported to parse it
    from stuffed_mamba.probes.registry import all_probes, cli_fields

    sub = p.add_subparsers(dest="probe", required=True, metavar="PROBE")
    for probe in all_probes():
        sp = sub.add_parser(probe.command, help=probe.help, description=probe.help)
        _common(sp)
        if probe.needs_text:
            sp.add_argument("--data", help="evaluation text source (default: the run's data.source)")
            sp.add_argument("--listing", help="listing within the source (default: the run's data.listing)")
        for f, tp in cli_fields(probe):
            flag = f.metadata.get("flag") or "--" + f.name.replace("_", "-")
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            shown = "" if default is None else f" (default: {default})"
            sp.add_argument(
                flag,
                dest=f"cfg_{f.name}",
                metavar=f.name.upper(),
                default=None,
                type=_parser(tp, f.metadata.get("tokens")),
                choices=f.metadata.get("choices"),
                help=f.metadata.get("help", "") + shown,
            )
        sp.set_defaults(func=run, probe_name=probe.name)


def _parser(tp, tokens: bool):
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if typing.get_origin(tp) in (typing.Union, types.UnionType) and args:  # Optional[X], X | None
        tp = args[0]
    if typing.get_origin(tp) is list:
        (item,) = typing.get_args(tp)
        return parse_lengths if tokens else _comma(item)
    return parse_length if tokens else tp


def _common(sp) -> None:
    sp.add_argument("--checkpoint", required=True, help="Lightning .ckpt or checkpoint folder")
    sp.add_argument(
        "--out", default=None, help="output folder (default: {run.dir}/eval for a checkpoint of `fit`, else ./eval)"
    )
    sp.add_argument("--tokenizer", help="tokenizer spec (default: the run's recipe, or the folder's tokenizer.json)")
    sp.add_argument("--train-length", type=parse_length, help="T_train (default: the run's recipe)")
    sp.add_argument(
        "--intervention",
        action="append",
        metavar="SPEC",
        help="none | rri[:A,B] | longmamba[:S] | window:W; repeat to compare (default: none)",
    )
    sp.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    sp.add_argument("--backend", default="torch", choices=["torch", "mamba_ssm"])
    sp.add_argument("--no-progress", action="store_true", help="no progress bar")


# ------------------------------------------------------------------------------------------------
class _Ctx:
    """What every probe command needs: the model, tokenizer, T_train, the run's data settings."""

    def __init__(self, args):
        import torch

        from stuffed_mamba.model import Intervention
        from stuffed_mamba.model.io import load_checkpoint

        self.interventions = args.intervention or ["none"]
        try:
            self._parsed = [Intervention.parse(spec) for spec in self.interventions]
        except ValueError as e:
            raise CLIError(str(e)) from None
        device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
        try:
            self.ckpt = load_checkpoint(args.checkpoint, backend=args.backend, device=device)
        except (FileNotFoundError, ValueError) as e:
            raise CLIError(str(e)) from None
        self.model = self.ckpt.model.float()  # appendix B: fp32 parameters and activations
        recipe = self.ckpt.recipe or {}
        self.data = dict(recipe.get("data") or {})
        self.train_length = args.train_length or self.data.get("train_length")
        self.tokenizer = self._tokenizer(args)
        self.out = Path(args.out) if args.out else _default_out(self.ckpt)
        self.progress = not args.no_progress

    def _tokenizer(self, args):
        from stuffed_mamba.data import load_tokenizer

        spec = args.tokenizer or self.data.get("tokenizer")
        folder = Path(self.ckpt.path)  # a hub name resolves to its snapshot folder
        if spec is None and folder.is_dir() and (folder / "tokenizer.json").is_file():
            spec = str(folder / "tokenizer.json")
        if spec is None:
            raise CLIError("no tokenizer known for this checkpoint: pass --tokenizer (e.g. EleutherAI/gpt-neox-20b)")
        try:
            tok = load_tokenizer(spec)
        except (FileNotFoundError, ValueError, RuntimeError) as e:
            raise CLIError(str(e)) from None
        if tok.vocab_size > self.model.config.vocab_size_padded:
            raise CLIError(
                f"tokenizer {spec!r} has {tok.vocab_size} tokens, the model only {self.model.config.vocab_size_padded}"
            )
        return tok

    def probe_context(self, args):
        from stuffed_mamba.probes.registry import Context

        source = getattr(args, "data", None) or self.data.get("source")
        listing = getattr(args, "listing", None) or self.data.get("listing")

        def eval_text(length: int, n: int, min_doc_tokens: int):
            from stuffed_mamba.data import load_eval_sequences

            return load_eval_sequences(
                source, self.tokenizer, length=length, n=n, min_doc_tokens=min_doc_tokens, listing=listing
            )

        return Context(
            tokenizer=self.tokenizer,
            train_length=self.train_length,
            eval_text=eval_text if source is not None else None,
        )

    def bar(self, desc: str):
        from tqdm.auto import tqdm

        return tqdm(desc=desc, unit="sample", disable=not self.progress, dynamic_ncols=True)


def _default_out(ckpt) -> Path:
    """Beside the run a `fit` checkpoint came from ({run.dir}/checkpoints/x.ckpt -> {run.dir}/eval);
    for a folder (an export, a hub snapshot in the HuggingFace cache) ./eval (ignored by git)."""
    path = Path(ckpt.path)
    if ckpt.kind == "lightning" and path.parent.name == "checkpoints":
        return path.parent.parent / "eval"
    return Path("eval")


def _warn_useless_windows(probe, cfg, pctx, specs: list[str]) -> None:
    """window:W with W >= every length evaluated never drops anything: the run equals `none`."""
    from stuffed_mamba.model import Intervention

    try:
        if hasattr(probe, "lengths"):
            longest = max(probe.lengths(cfg, pctx))
        elif hasattr(cfg, "length"):
            longest = cfg.length or 4 * pctx.need_train_length(probe.name)
        else:
            return
    except (ValueError, TypeError):
        return
    for spec in specs:
        w = Intervention.parse(spec)
        if w is not None and w.window is not None and w.window >= longest:
            print(
                f"stuffed-mamba eval: warning: --intervention {spec}: the window ({w.window}) is not shorter than "
                f"the longest length evaluated ({longest}): this run equals 'none'",
                file=sys.stderr,
                flush=True,
            )


def _earlier_outputs(out: Path, command: str) -> set[str]:
    """The files an earlier `eval COMMAND` wrote into `out`: those its JSON lists, and (JSONs from
    before the list) its PNGs by their names, `COMMAND_<figure>[_<intervention>].png`. Another
    probe's files and the user's own are not among them."""
    try:
        listed = json.loads((out / f"{command}.json").read_text()).get("files") or []
    except (OSError, ValueError, AttributeError):
        listed = []
    owned = {name for name in listed if isinstance(name, str) and Path(name).name == name and name.startswith(command)}
    return owned | {p.name for p in out.glob(f"{command}_*.png")}


def _suffix(spec: str, n: int) -> str:
    return "" if n == 1 and spec == "none" else "_" + spec.replace(":", "").replace(",", "_")


# ------------------------------------------------------------------------------------------------
def run(args: argparse.Namespace) -> int:
    """One probe once per --intervention: PNGs, then the table and the JSON (the first run's
    summary at the top level, all runs under "interventions")."""
    import inspect

    import torch

    from stuffed_mamba.probes.plots import save
    from stuffed_mamba.probes.registry import as_config, get

    t0 = time.monotonic()
    probe = get(args.probe_name)
    given = {k[len("cfg_") :]: v for k, v in vars(args).items() if k.startswith("cfg_") and v is not None}
    cfg = as_config(probe, given)
    ctx = _Ctx(args)
    pctx = ctx.probe_context(args)
    try:
        probe.check(cfg, pctx)
        inputs = probe.inputs(cfg, pctx)
    except (ValueError, FileNotFoundError) as e:
        raise CLIError(str(e)) from None
    _warn_useless_windows(probe, cfg, pctx, ctx.interventions)
    ctx.out.mkdir(parents=True, exist_ok=True)
    runs, tables, pngs = {}, [], []
    takes_progress = "progress" in inspect.signature(probe.run).parameters
    with torch.no_grad():
        for spec, intervention in zip(ctx.interventions, ctx._parsed, strict=True):
            ctx.model.set_intervention(intervention)
            note = f"intervention: {spec}"
            with ctx.bar(f"{probe.command} [{spec}]") as bar:
                extra = {"progress": lambda *_: bar.update(1)} if takes_progress else {}
                result = probe.run(ctx.model, inputs, cfg, None, **extra)
            summary = probe.summary(result, cfg, pctx)
            runs[spec] = summary
            tables.append(probe.table(result, summary, cfg, note))
            for name, fig in probe.figures(result, cfg, pctx, note).items():
                png = f"{probe.command}_{name}{_suffix(spec, len(ctx.interventions))}.png"
                save(fig, ctx.out / png)
                pngs.append(png)
    payload = {
        "checkpoint": ctx.ckpt.path,
        "step": ctx.ckpt.step,
        "train_length": ctx.train_length,
        "intervention": ctx.interventions[0],
        **runs[ctx.interventions[0]],
    }
    if len(runs) > 1:
        payload["interventions"] = runs
    table = "\n\n".join(tables)
    stale = _earlier_outputs(ctx.out, probe.command) - {f"{probe.command}.json", f"{probe.command}.txt", *pngs}
    payload["files"] = [f"{probe.command}.json", f"{probe.command}.txt", *pngs]
    (ctx.out / f"{probe.command}.json").write_text(json.dumps(payload, indent=1))
    (ctx.out / f"{probe.command}.txt").write_text(table + "\n")
    for name in sorted(stale):  # after the new outputs are whole: a failed eval leaves the earlier ones
        (ctx.out / name).unlink(missing_ok=True)
    print(table)
    print(
        f"wrote {ctx.out / (probe.command + '.json')}, {ctx.out / (probe.command + '.txt')}"
        + "".join(f", {ctx.out / p}" for p in pngs)
        + (f"; removed the earlier eval's {', '.join(sorted(stale))}" if stale else "")
    )
    print(f"({time.monotonic() - t0:.1f} s)")
    return 0
