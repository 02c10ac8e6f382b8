"""`stuffed-mamba analyze {state-size,scaling,sweep}`: the state-size analysis of section 5.

stuffed-mamba analyze state-size [--config 130m|370m|780m|PATH ...] [--json]
stuffed-mamba analyze sweep SWEEP_RECIPE [--cell I] [--list] [--count] [--force] [key=value ...]
stuffed-mamba analyze scaling RESULTS [--out DIR] [--units auto|paper] [--json]
"""

from __future__ import annotations

import json
import os
import sys


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "analyze", help="state size N_S, forget-threshold sweeps and scaling-law fits (section 5)"
    )
    sub = p.add_subparsers(dest="analyze_command", required=True, metavar="ANALYSIS")

    s = sub.add_parser(
        "state-size", help="print N_S (floats in the recurrent state) and the paper's predicted thresholds"
    )
    s.add_argument(
        "--config",
        action="append",
        metavar="SPEC",
        help="130m, 370m, 780m, an official or transformers config.json (or its folder), or a recipe "
        "YAML (its model: section); repeatable; default: the three official sizes",
    )
    s.add_argument("--json", action="store_true", help="print JSON instead of a table")
    s.set_defaults(func=_state_size)

    w = sub.add_parser(
        "sweep", help="run a state-size x training-length sweep (each cell: fit, position loss, passkey)"
    )
    w.add_argument("sweep_recipe", metavar="SWEEP_RECIPE", help="e.g. recipes/sweeps/forget_threshold_cpu.yaml")
    w.add_argument("overrides", nargs="*", metavar="key=value", help="overrides of the sweep recipe (e.g. out_dir=...)")
    w.add_argument(
        "--cell",
        type=str,
        default=None,
        help="run only these cells (indices '3' or '0,4,7', or names); default: all in order. "
        "A Slurm array passes $SLURM_ARRAY_TASK_ID",
    )
    w.add_argument("--list", action="store_true", help="print the cells and their fit commands, run nothing")
    w.add_argument("--count", action="store_true", help="print the number of cells (for sbatch --array=0-<count-1>)")
    w.add_argument("--force", action="store_true", help="rerun cells that already have a result.json")
    w.add_argument(
        "--reevaluate",
        action="store_true",
        help="evaluate finished fits again with the recipe's current eval: settings (no training)",
    )
    w.add_argument("--no-analyze", action="store_true", help="skip `analyze scaling` after the cells")
    w.set_defaults(func=_sweep)

    c = sub.add_parser("scaling", help="fit T_forget = a*N_S + b and T_recall = a*(c^N_S - 1) + b to a sweep's results")
    c.add_argument("results", metavar="RESULTS", help="results.jsonl, a .csv with the same columns, or a sweep out_dir")
    c.add_argument(
        "--out", default=None, help="folder for forget_law.png, recall_law.png, scaling.json (default: next to RESULTS)"
    )
    c.add_argument(
        "--units",
        choices=("auto", "paper"),
        default="auto",
        help="auto: N_S and T in M/K/1 chosen by the data; paper: M floats, K tokens",
    )
    c.add_argument(
        "--criterion",
        default="paper",
        help="when a run learned to forget: 'paper' (section 4.2: the loss beyond T_train never exceeds "
        "2x the max within it) or 'rise:X' (the late loss exceeds the loss just before T_train by "
        "at most X nats)",
    )
    c.add_argument("--no-plots", action="store_true")
    c.add_argument("--json", action="store_true", help="print the report as JSON")
    c.add_argument("--markdown", action="store_true", help="also print the runs and thresholds as Markdown tables")
    c.set_defaults(func=_scaling)


def _state_size(args) -> int:
    from stuffed_mamba.analysis.fits import PAPER_T_FORGET, PAPER_T_RECALL
    from stuffed_mamba.analysis.state_size import OFFICIAL_SIZES, resolve
    from stuffed_mamba.cli import CLIError

    specs = args.config or list(OFFICIAL_SIZES)
    reports = []
    for spec in specs:
        try:
            s = resolve(spec)
        except (ValueError, KeyError, OSError) as e:
            raise CLIError(f"{spec}: {e}") from None
        d = s.as_dict()
        d["name"] = d["name"] or spec
        d["ssm_state"] = s.config.ssm_state_size
        d["conv_state"] = s.config.conv_state_size
        d["predicted_t_forget"] = float(PAPER_T_FORGET.tokens(s.state_size))
        d["predicted_t_recall"] = float(PAPER_T_RECALL.tokens(s.state_size))
        reports.append(d)
    if args.json:
        print(json.dumps(reports if len(reports) > 1 else reports[0], indent=2))
        return 0
    w = max(22, *(len(d["name"]) for d in reports))
    print(
        f"{'config':<{w}} {'d_model':>7} {'layers':>6} {'N':>4} {'P':>3} {'H':>4} "
        f"{'N_S (floats)':>14} {'N_S':>7} {'T_forget*':>10} {'T_recall*':>10}"
    )
    for d in reports:
        print(
            f"{d['name']:<{w}} {d['d_model']:>7} {d['n_layer']:>6} {d['d_state']:>4} {d['headdim']:>3} "
            f"{d['nheads']:>4} {d['state_size']:>14,} {d['state_size'] / 1e6:>6.2f}M "
            f"{_k(d['predicted_t_forget']):>10} {_k(d['predicted_t_recall']):>10}"
        )
    print(
        "N_S = n_layer * (H*P*N + (d_inner + 2*ngroups*N) * (d_conv-1)): SSM plus conv states.\n"
        "* the paper's fits (section 5): T_forget = 5.172*N_S - 4.469, T_recall = 4.756*(1.365^N_S - 1) - 0.742 "
        "(N_S in M floats, T in K tokens); fitted on models up to 370M, extrapolated beyond."
    )
    return 0


def _k(tokens: float) -> str:
    if tokens <= 0:
        return "none"
    return f"{tokens / 1e3:.1f}K" if tokens < 1e6 else f"{tokens / 1e6:.2f}M"


def _select(cells, spec: str):
    from stuffed_mamba.cli import CLIError

    by_name = {c.name: c for c in cells}
    out = []
    for part in spec.split(","):
        part = part.strip()
        if part.isdigit():
            i = int(part)
            if i >= len(cells):
                raise CLIError(f"--cell {i}: the sweep has {len(cells)} cells (0..{len(cells) - 1})")
            out.append(cells[i])
        elif part in by_name:
            out.append(by_name[part])
        else:
            raise CLIError(f"--cell {part}: neither an index nor a cell name ({', '.join(by_name)})")
    return out


def _sweep(args) -> int:
    from stuffed_mamba.cli import CLIError
    from stuffed_mamba.sweep import expand, load_sweep, results_path, run_sweep
    from stuffed_mamba.sweep.runner import fit_command

    try:
        recipe, base = load_sweep(args.sweep_recipe, args.overrides)
        cells = expand(recipe, base)
    except (ValueError, KeyError) as e:
        raise CLIError(str(e)) from None
    if args.count:
        print(len(cells))
        return 0
    if args.list:
        for c in cells:
            print(f"{c.index:>3} {c.name}: {' '.join(fit_command(base, c)[1:])}")
        return 0
    chosen = _select(cells, args.cell) if args.cell is not None else cells
    rows = run_sweep(
        recipe, base, chosen, force=args.force, reevaluate=args.reevaluate, log=lambda m: print(m, flush=True)
    )
    bad = [r["cell"] for r in rows if r.get("status") not in ("ok", "not_fitted")]
    if not args.no_analyze and args.cell is None:
        from stuffed_mamba.analysis.scaling import analyze
        from stuffed_mamba.analysis.scaling_tables import format_report

        try:
            rep = analyze(results_path(recipe), recipe.out_dir)
            print(format_report(rep))
        except ValueError as e:
            print(f"analyze scaling: {e}", file=sys.stderr)
    if bad:
        print(f"{len(bad)} cell(s) failed: {', '.join(bad)} (see their fit.log / results row)", file=sys.stderr)
        return 1
    return 0


def _scaling(args) -> int:
    from stuffed_mamba.analysis.scaling import analyze
    from stuffed_mamba.analysis.scaling_tables import format_markdown, format_report
    from stuffed_mamba.cli import CLIError

    out = args.out
    if out is None:
        out = args.results if os.path.isdir(args.results) else os.path.dirname(os.path.abspath(args.results))
    try:
        rep = analyze(args.results, out, units=args.units, plots=not args.no_plots, criterion=args.criterion)
    except (ValueError, FileNotFoundError) as e:
        raise CLIError(str(e)) from None
    if args.json:
        print(json.dumps(rep.as_dict(), indent=2, default=str))
    else:
        print(format_report(rep))
    if args.markdown:
        print()
        print(format_markdown(rep))
    return 0
