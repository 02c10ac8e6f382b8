"""`stuffed-mamba data {inspect,prepare}`: look at a source (RedPajama-V2 or hf://); mirror it."""

from __future__ import annotations

import json
import re
import sys


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("data", help="inspect a data source or prepare a local mirror")
    sub = p.add_subparsers(dest="data_command", required=True, metavar="SUBCOMMAND")

    q = sub.add_parser(
        "inspect",
        help="run the stream, dedup and filter stages and count what they keep and drop",
        description="One pass over the shards (listing order, one stream). Counts go to stdout; "
        "with --emit-ids the kept documents' ids go to stdout, one a line in stream order, and the "
        "counts to stderr. Progress lines (documents, tokens, rate) go to stderr every 5 s.",
    )
    q.add_argument("source", metavar="SOURCE", help="RedPajama-V2 mirror folder or base URL, or hf://NAME")
    q.add_argument("--listing", metavar="FILE", help="a listings/*.txt name or a local file (default: all)")
    _hf_arguments(q, rows=True)
    q.add_argument("--tokenizer", metavar="SPEC", default="data/sample/tokenizer.json")
    q.add_argument("--min-doc-tokens", metavar="N", type=int, default=4096)
    q.add_argument("--no-dedup", action="store_true", help="keep listed and in-stream duplicates")
    q.add_argument("--timeout", metavar="S", type=float, default=60.0, help="network time-out per operation")
    q.add_argument("--retries", metavar="N", type=int, default=5)
    q.add_argument("--json", action="store_true", help="print the counts as one JSON object")
    q.add_argument("--emit-ids", action="store_true", help="print kept document ids in stream order")
    q.set_defaults(func=run_inspect)

    r = sub.add_parser(
        "prepare",
        help="copy shards of a source (URL, folder or hf://NAME) into a local mirror",
        description="RedPajama-V2: downloads documents and duplicates lists (and optionally quality "
        "signals) of the listing's first N shards into OUT, and writes OUT/listings/<listing>. "
        "hf://NAME: writes every shard (or the first N) as OUT/<shard>.parquet with the text column, "
        "readable offline as data.source=hf://parquet, data.hf_data_files=OUT/*.parquet. "
        "Run it again to resume.",
    )
    r.add_argument("source", metavar="SOURCE", help="base URL (or folder) in the RedPajama-V2 layout, or hf://NAME")
    r.add_argument("out", metavar="OUT", help="the local mirror folder to fill")
    r.add_argument("--listing", metavar="FILE", help="a listings/*.txt name or a local file (RedPajama-V2: required)")
    r.add_argument("--shards", metavar="N", type=int, help="only the first N shards (of the listing)")
    _hf_arguments(r)
    r.add_argument("--quality-signals", action="store_true", help="also copy quality_signals/")
    r.add_argument("--timeout", metavar="S", type=float, default=60.0)
    r.add_argument("--retries", metavar="N", type=int, default=5)
    r.set_defaults(func=run_prepare)


def _hf_arguments(p, *, rows: bool = False) -> None:
    g = p.add_argument_group("hf:// sources (datasets streaming)")
    g.add_argument("--data-files", metavar="GLOB", action="append", help="data.hf_data_files (repeatable)")
    g.add_argument("--text-field", metavar="F", default="text", help="the column holding the text (default: text)")
    g.add_argument("--config", metavar="NAME", dest="hf_config", help="the dataset's configuration")
    g.add_argument("--split", metavar="S", default="train", help="default: train")
    g.add_argument("--reshard", action="store_true", help="parquet: one shard per row group")
    if rows:
        g.add_argument("--rows-per-shard", metavar="N", type=int, help="parquet: shards of N consecutive rows")


def _hf_keys(args) -> dict:
    """The hf_* keywords of an hf:// source (none for RedPajama-V2: DataConfig rejects them there)."""
    if not args.source.startswith("hf://"):
        given = [f for f, v in (("--data-files", args.data_files), ("--config", args.hf_config),
                                ("--reshard", args.reshard),
                                ("--rows-per-shard", getattr(args, "rows_per_shard", None))) if v] + [
            f for f, v, d in (("--text-field", args.text_field, "text"), ("--split", args.split, "train")) if v != d
        ]  # fmt: skip
        if given:
            from stuffed_mamba.cli import CLIError

            raise CLIError(f"{', '.join(given)}: for hf:// sources only (SOURCE is {args.source!r})")
        return {}
    files = args.data_files
    keys = {
        "hf_data_files": files[0] if files and len(files) == 1 else files,
        "hf_config": args.hf_config,
        "hf_split": args.split,
        "hf_reshard": args.reshard,
        "text_field": args.text_field,
    }
    if getattr(args, "rows_per_shard", None) is not None:
        keys["hf_rows_per_shard"] = args.rows_per_shard
    return keys


# the recipe keys the data package's advice names, as this command's arguments
_FLAGS = (
    (re.compile(r"data\.source=(\S+) data\.hf_data_files="), r"data inspect \1 --data-files "),
    (re.compile(r"data\.hf_data_files\b"), "--data-files"),
    (re.compile(r"data\.hf_reshard=true"), "--reshard"),
    (re.compile(r"data\.hf_rows_per_shard="), "--rows-per-shard "),
    (re.compile(r"data\.hf_rows_per_shard\b"), "--rows-per-shard"),
    (re.compile(r"data\.text_field\b"), "--text-field"),
    (re.compile(r"data\.min_doc_tokens\b"), "--min-doc-tokens"),
    (re.compile(r"data\.source\b"), "SOURCE"),
    (re.compile(r"data\.listing\b"), "--listing"),
)


def as_flags(line: str) -> str:
    """A data-package message naming recipe keys (data.X), worded for `data inspect`'s arguments."""
    for pattern, repl in _FLAGS:
        line = pattern.sub(repl, line)
    return line


def _cli_error(e: Exception):
    from stuffed_mamba.cli import CLIError

    return CLIError(str(e).splitlines()[0] if str(e) else type(e).__name__)


def run_inspect(args) -> int:
    from stuffed_mamba.data.inspect import inspect_source
    from stuffed_mamba.data.progress import Progress

    if args.min_doc_tokens < 1:
        from stuffed_mamba.cli import CLIError

        raise CLIError(f"--min-doc-tokens must be >= 1, got {args.min_doc_tokens}")
    emit = (lambda doc_id: print(doc_id)) if args.emit_ids else None
    hf = _hf_keys(args)
    verdict = []
    try:
        counts = inspect_source(
            args.source,
            listing=args.listing,
            tokenizer=args.tokenizer,
            min_doc_tokens=args.min_doc_tokens,
            dedup=not args.no_dedup,
            timeout_s=args.timeout,
            retries=args.retries,
            on_kept=emit,
            progress=Progress("inspect"),
            on_empty=verdict.append,
            **hf,
        )
    except (OSError, ValueError, RuntimeError) as e:
        raise _cli_error(ValueError(as_flags(str(e)))) from None
    out = sys.stderr if args.emit_ids else sys.stdout
    if args.json:
        print(json.dumps(counts), file=out)
    else:
        width = max(map(len, counts))
        for k, v in counts.items():
            print(f"{k:<{width}}  {v:>12,}", file=out)
    if verdict:  # the counts above, then why nothing was kept and what to do; exit 2 like any CLIError
        from stuffed_mamba.cli import CLIError

        raise CLIError(as_flags(verdict[0]))
    return 0


def run_prepare(args) -> int:
    from stuffed_mamba.data.progress import Progress

    hf = _hf_keys(args)
    try:
        if hf:
            from stuffed_mamba.data.prepare import prepare_hf

            if args.listing:
                raise ValueError("--listing is for RedPajama-V2 sources")
            report = prepare_hf(args.source, args.out, shards=args.shards, progress=Progress("prepare"), **hf)
        else:
            from stuffed_mamba.data.prepare import prepare_mirror

            if not args.listing:
                raise ValueError("--listing is required for a RedPajama-V2 source")
            report = prepare_mirror(
                args.source,
                args.out,
                listing=args.listing,
                shards=args.shards,
                quality_signals=args.quality_signals,
                timeout_s=args.timeout,
                retries=args.retries,
                progress=Progress("prepare"),
            )
    except (OSError, ValueError, RuntimeError) as e:
        raise _cli_error(e) from None
    print(json.dumps(report, indent=1))
    return 1 if report["failed"] and not report["shards"] else 0
