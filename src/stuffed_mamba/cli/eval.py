"""`stuffed-mamba eval {passkey,retention,states,loss} --checkpoint PATH ...`: the forgetting probes on any checkpoint.

PATH is a Lightning checkpoint (`{run.dir}/checkpoints/last.ckpt`; its run's recipe gives
the tokenizer, T_train and the evaluation data) or a checkpoint folder (official or
exported). Each command prints a table and writes `DIR/<command>.json`, `DIR/<command>.txt`
and PNG plots. `--intervention` (repeatable: none, rri, longmamba:0.5, window:W) compares
training-free interventions on the same checkpoint, as in figure 4.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from stuffed_mamba.cli import CLIError

COMMANDS = ("passkey", "retention", "states", "loss")


def parse_length(text: str) -> int:
    """"4096", "4K" (x1024), "1M" (x2^20)."""
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


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("eval", help="run a forgetting probe on a checkpoint",
                              description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="probe", required=True, metavar="PROBE")

    def common(sp):
        sp.add_argument("--checkpoint", required=True, help="Lightning .ckpt or checkpoint folder")
        sp.add_argument("--out", default="eval", help="output folder (default: ./eval)")
        sp.add_argument("--tokenizer", help="tokenizer spec (default: the run's recipe, or the folder's tokenizer.json)")
        sp.add_argument("--train-length", type=parse_length, help="T_train (default: the run's recipe)")
        sp.add_argument("--intervention", action="append", metavar="SPEC",
                        help="none | rri[:A,B] | longmamba[:S] | window:W; repeat to compare (default: none)")
        sp.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda when available)")
        sp.add_argument("--backend", default="torch", choices=["torch", "mamba_ssm"])
        sp.add_argument("--no-progress", action="store_true", help="no progress bar")
        sp.set_defaults(func=run)

    def data_args(sp, n_default):
        sp.add_argument("--data", help="evaluation text source (default: the run's data.source)")
        sp.add_argument("--listing", help="listing within the source (default: the run's data.listing)")
        sp.add_argument("--min-doc-tokens", type=int, default=16384, help="appendix F: documents >= 16K tokens")
        sp.add_argument("--samples", type=int, default=n_default, help="evaluation sequences averaged over")

    sp = sub.add_parser("passkey", help="passkey retrieval accuracy per (length, depth), T_recall")
    common(sp)
    sp.add_argument("--lengths", type=parse_lengths, default=parse_lengths("1K,2K,4K,8K,16K"),
                    help="context lengths, e.g. 1K,2K,...,256K (default 1K..16K)")
    sp.add_argument("--samples", type=int, default=10, help="needle depths per length: i/n, i = 0..n-1")
    sp.add_argument("--repeats", type=int, default=1, help="keys per (length, depth)")
    sp.add_argument("--last-r", type=parse_lengths, default=parse_lengths("1K,2K,4K,8K"))
    sp.add_argument("--prefill-chunk", type=int, default=4096)
    sp.add_argument("--max-new-tokens", type=int, default=8)
    sp.add_argument("--seed", type=int, default=0, help="seed of the keys")

    sp = sub.add_parser("retention", help="first-token retention alpha_{1:t} per layer and head (figure 3)")
    common(sp)
    sp.add_argument("--length", type=parse_length, help="probe text length (default 4 x T_train)")
    sp.add_argument("--text", choices=["data", "passkey", "newlines"], default=None,
                    help="probe text (default: data when a source is known, else the passkey filler)")
    sp.add_argument("--chunk", type=int, default=4096)
    data_args(sp, 1)

    sp = sub.add_parser("states", help="SSM state mean/variance over time on the newlines prompt (figures 5-6)")
    common(sp)
    sp.add_argument("--length", type=parse_length, help="prompt length (default 4 x T_train)")
    sp.add_argument("--points", type=int, default=64, help="evenly spaced time points")
    sp.add_argument("--chunk", type=int, default=4096)

    sp = sub.add_parser("loss", help="LM loss per position and learned_to_forget (section 4.2, figures 1, 4, 10)")
    common(sp)
    sp.add_argument("--length", type=parse_length, help="evaluation context (default 4 x T_train)")
    sp.add_argument("--buckets", type=int, default=24, help="log-spaced position buckets in the table")
    sp.add_argument("--chunk", type=int, default=4096)
    data_args(sp, 4)


# ------------------------------------------------------------------------------------------------
class _Ctx:
    """What every probe command needs: the model, tokenizer, T_train, the run's data settings."""

    def __init__(self, args):
        import torch

        from stuffed_mamba.probes.checkpoint import load_checkpoint

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
        self.interventions = args.intervention or ["none"]
        self.out = Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.progress = not args.no_progress

    def _tokenizer(self, args):
        from stuffed_mamba.data import load_tokenizer

        spec = args.tokenizer or self.data.get("tokenizer")
        if spec is None and Path(args.checkpoint).is_dir() and (Path(args.checkpoint) / "tokenizer.json").is_file():
            spec = str(Path(args.checkpoint) / "tokenizer.json")
        if spec is None:
            raise CLIError("no tokenizer known for this checkpoint: pass --tokenizer (e.g. EleutherAI/gpt-neox-20b)")
        try:
            tok = load_tokenizer(spec)
        except (FileNotFoundError, ValueError, RuntimeError) as e:
            raise CLIError(str(e)) from None
        if tok.vocab_size > self.model.config.vocab_size_padded:
            raise CLIError(f"tokenizer {spec!r} has {tok.vocab_size} tokens, the model only "
                           f"{self.model.config.vocab_size_padded}")
        return tok

    def need_train_length(self) -> int:
        if not self.train_length:
            raise CLIError("T_train unknown (no recipe.yaml beside the checkpoint's run): pass --train-length")
        return int(self.train_length)

    def set_intervention(self, spec: str) -> str:
        from stuffed_mamba.model import Intervention

        try:
            self.model.set_intervention(Intervention.parse(spec))
        except ValueError as e:
            raise CLIError(str(e)) from None
        return spec or "none"

    def bar(self, total: int, desc: str):
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=desc, unit="sample", disable=not self.progress, dynamic_ncols=True)

    def eval_text(self, args, length: int):
        from stuffed_mamba.data import load_eval_sequences

        source = args.data or self.data.get("source")
        if source is None:
            raise CLIError("no evaluation text: pass --data SOURCE (a RedPajama-V2 mirror folder or URL)")
        try:
            return load_eval_sequences(source, self.tokenizer, length=length, n=args.samples,
                                       min_doc_tokens=args.min_doc_tokens, listing=args.listing or self.data.get("listing"))
        except (ValueError, FileNotFoundError) as e:
            raise CLIError(str(e)) from None

    def finish(self, name: str, payload: dict, table: str, pngs: list[str]) -> None:
        payload = {"checkpoint": self.ckpt.path, "step": self.ckpt.step, "train_length": self.train_length, **payload}
        (self.out / f"{name}.json").write_text(json.dumps(payload, indent=1))
        (self.out / f"{name}.txt").write_text(table + "\n")
        print(table)
        print(f"wrote {self.out / (name + '.json')}, {self.out / (name + '.txt')}"
              + "".join(f", {self.out / p}" for p in pngs))


    def per_intervention(self, probe: str, run_one) -> int:
        """Run `run_one(name) -> (summary, table, figure)` once per --intervention, write the PNGs,
        then the JSON (the first run's summary at the top level, all runs under "interventions")."""
        from stuffed_mamba.probes.plots import save

        runs, tables, pngs = {}, [], []
        with self.bar(len(self.interventions), probe) as bar:
            for spec in self.interventions:
                name = self.set_intervention(spec)
                summary, table, figure = run_one(name)
                runs[name] = summary
                tables.append(table)
                png = f"{probe}{_suffix(spec, len(self.interventions))}.png"
                save(figure, self.out / png)
                pngs.append(png)
                bar.update(1)
        payload = {"intervention": next(iter(runs)), **next(iter(runs.values()))}
        if len(runs) > 1:
            payload["interventions"] = runs
        self.finish(probe, payload, "\n\n".join(tables), pngs)
        return 0


def _suffix(spec: str, n: int) -> str:
    return "" if n == 1 and spec == "none" else "_" + spec.replace(":", "").replace(",", "_")


# ------------------------------------------------------------------------------------------------
def run(args: argparse.Namespace) -> int:
    import torch

    t0 = time.monotonic()
    ctx = _Ctx(args)
    with torch.no_grad():
        rc = {"passkey": _passkey, "retention": _retention, "states": _states, "loss": _loss}[args.probe](ctx, args)
    print(f"({time.monotonic() - t0:.1f} s)")
    return rc


def _passkey(ctx: _Ctx, args) -> int:
    import torch

    from stuffed_mamba.probes.passkey import evaluate_passkey
    from stuffed_mamba.probes.plots import passkey_heatmap, passkey_last_r, save
    from stuffed_mamba.probes.tables import passkey_table

    if args.samples < 1 or args.repeats < 1:
        raise CLIError("--samples and --repeats must be >= 1")
    runs, tables, pngs = {}, [], []
    for spec in ctx.interventions:
        name = ctx.set_intervention(spec)
        total = len(args.lengths) * args.samples * args.repeats
        with ctx.bar(total, f"passkey [{name}]") as bar:
            def tick(trial):
                bar.update(1)
                bar.set_postfix_str(f"T={trial.length} {'ok' if trial.correct else 'miss'}")

            try:
                res = evaluate_passkey(
                    ctx.model, ctx.tokenizer, args.lengths, samples=args.samples, repeats=args.repeats,
                    prefill_chunk=args.prefill_chunk, max_new_tokens=args.max_new_tokens,
                    generator=torch.Generator().manual_seed(args.seed), progress=tick,
                )
            except ValueError as e:
                raise CLIError(str(e)) from None
        runs[name] = res.to_json(last_r=args.last_r)
        tables.append(passkey_table(res, args.last_r, title=f"passkey retrieval, intervention: {name}"))
        png = f"passkey_heatmap{_suffix(spec, len(ctx.interventions))}.png"
        save(passkey_heatmap(res, title=f"passkey [{name}]"), ctx.out / png)
        png_r = f"passkey_last_r{_suffix(spec, len(ctx.interventions))}.png"
        save(passkey_last_r(res, args.last_r, title=f"needle within the last r tokens [{name}]"), ctx.out / png_r)
        pngs += [png, png_r]
    first = next(iter(runs.values()))
    payload = {"intervention": next(iter(runs)), **first}
    if len(runs) > 1:
        payload["interventions"] = runs
    ctx.finish("passkey", payload, "\n\n".join(tables), pngs)
    return 0


def _retention(ctx: _Ctx, args) -> int:
    from stuffed_mamba.probes.passkey import build_prompt
    from stuffed_mamba.probes.plots import retention_curves
    from stuffed_mamba.probes.retention import first_token_retention, retention_summary
    from stuffed_mamba.probes.states import newlines_prompt
    from stuffed_mamba.probes.tables import retention_table

    import torch

    T_train = ctx.need_train_length()
    length = args.length or 4 * T_train
    text = args.text or ("data" if (args.data or ctx.data.get("source")) else "passkey")
    if text == "data":
        ids = ctx.eval_text(args, length)
    elif text == "passkey":
        ids = torch.tensor([build_prompt(ctx.tokenizer, length, 0.5, "12345")])
    else:
        ids = newlines_prompt(ctx.tokenizer, length)
    device = next(ctx.model.parameters()).device

    def run_one(name):
        alpha = first_token_retention(ctx.model, ids.to(device), chunk_size=args.chunk).cpu()
        s = retention_summary(alpha, T_train)
        table = retention_table(s, title=f"first-token retention alpha_1:t ({text} text), intervention: {name}")
        return {"text": text, "length": int(ids.shape[1]), **s}, table, retention_curves(alpha, T_train)

    return ctx.per_intervention("retention", run_one)


def _states(ctx: _Ctx, args) -> int:
    from stuffed_mamba.probes.plots import state_curves
    from stuffed_mamba.probes.states import newlines_prompt, state_statistics, state_summary, time_points
    from stuffed_mamba.probes.tables import states_table

    T_train = ctx.need_train_length()
    length = args.length or 4 * T_train
    try:
        ids = newlines_prompt(ctx.tokenizer, length).to(next(ctx.model.parameters()).device)
    except ValueError as e:
        raise CLIError(str(e)) from None
    points = time_points(length, args.points, T_train)

    def run_one(name):
        stats = state_statistics(ctx.model, ids, points, max_chunk=args.chunk)
        s = state_summary(stats, T_train)
        s["mean"] = stats.mean.tolist()
        s["var"] = stats.var.tolist()
        table = states_table(s, title=f"SSM state statistics on the newlines prompt, intervention: {name}")
        return s, table, state_curves(stats, T_train)

    return ctx.per_intervention("states", run_one)


def _loss(ctx: _Ctx, args) -> int:
    from stuffed_mamba.probes.plots import loss_vs_position, save
    from stuffed_mamba.probes.position_loss import loss_per_position, loss_summary
    from stuffed_mamba.probes.tables import loss_table

    T_train = ctx.need_train_length()
    length = args.length or 4 * T_train
    ids = ctx.eval_text(args, length + 1)  # length positions, each with its next token
    curves, summaries = {}, {}
    with ctx.bar(len(ctx.interventions) * ids.shape[0], "loss") as bar:
        for spec in ctx.interventions:
            name = ctx.set_intervention(spec)
            loss = loss_per_position(ctx.model, ids, chunk_size=args.chunk, progress=lambda i: bar.update(1))
            curves[name] = loss
            summaries[name] = loss_summary(loss, T_train, buckets=args.buckets)
    save(loss_vs_position(None, T_train, curves=curves), ctx.out / "loss_vs_position.png")
    first = next(iter(summaries))
    payload = {"intervention": first, "length": length, "sequences": int(ids.shape[0]), **summaries[first]}
    if len(summaries) > 1:
        payload["interventions"] = summaries
    ctx.finish("loss", payload, loss_table(summaries, title="LM loss by position (log buckets)"),
               ["loss_vs_position.png"])
    return 0
