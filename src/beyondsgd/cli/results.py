"""``beyondsgd report`` and ``beyondsgd export``: read a store (read-only) into a report or
files. A store's user problems are registered from the cards stored with their trials, so
neither needs the user's file."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..bench.problems import PROBLEMS
from ..bench.report import write_report
from ..bench.report.yours import ensure_registered
from ..bench.run.validate import (
    require_bench_extra,
)
from ..bench.store.export import export_deepobs, export_store
from .common import (
    CLIError,
    _check_out,
    _csv,
    _open_store,
    _print_summary,
)


def cmd_report(args: argparse.Namespace) -> int:
    problems = _csv(args.problem) if args.problem is not None else None
    if problems == []:
        raise CLIError(f"--problem {args.problem!r} names nothing; accepted: comma-separated "
                       f"problem names")
    require_bench_extra("report", ("scipy",) if args.no_plots else ("scipy", "matplotlib"))
    _check_out(args.out)
    with _open_store(args.store, readonly=True) as store:
        ensure_registered(store)  # its user problems, from their stored cards: no file needed
        if problems:
            stored = sorted({t["problem"] for t in store.trials()})
            bad = [p for p in problems if p not in stored]
            if bad:
                unknown = [p for p in bad if p not in PROBLEMS]
                what = (f"unknown problem(s) {', '.join(unknown)}" if unknown else
                        f"no trials of {', '.join(bad)}")
                raise CLIError(f"--problem: {what} in {args.store}; problems in this store: "
                               f"{', '.join(stored) or 'none'}")
        path = write_report(store, args.out, problems, plots=not args.no_plots)
        _print_summary(store, problems)
    print(f"report: {path}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """``--format json`` (default): per-trial JSON (problem/method/hparams/seed.json) + one CSV.
    ``--format deepobs``: DeepOBS 1.1.2's result layout, read by its analyzer."""
    _check_out(args.out)
    if args.format == "deepobs":
        out = Path(args.out)
        if out.is_dir() and any(out.iterdir()):
            raise CLIError(f"--out {args.out!r} is not empty; accepted for --format deepobs: a "
                           f"new or empty directory (DeepOBS's analyzer reads every run under "
                           f"it, so older files would be mixed in)")
        with _open_store(args.store, readonly=True) as store:
            ensure_registered(store)
            res = export_deepobs(store, args.out)
        skipped = ", ".join(f"{n} {s}" for s, n in sorted(res["skipped"].items()))
        note = f" (skipped: {skipped}; only finished and diverged trials are runs)" \
            if skipped else ""
        print(f"exported {res['written']} runs in DeepOBS's layout to {args.out}{note}")
        if res["written"] and res["accuracies"] < res["written"]:
            print(f"  {res['written'] - res['accuracies']} run(s) without accuracies: the store "
                  f"has no training accuracy for them (DeepOBS then ranks by valid_losses)")
        return 0
    with _open_store(args.store, readonly=True) as store:
        ensure_registered(store)
        n_trials, n_files = export_store(store, args.out)
    print(f"exported {n_trials} trials: {n_files} JSON files and evals.csv in {args.out}")
    return 0
