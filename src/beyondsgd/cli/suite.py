"""``beyondsgd suite``: the benchmark protocol for every problem x method of a budget, then the
report."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys

from ..bench.problems import PROBLEMS, get_problem
from ..bench.report import write_report
from ..bench.run.batch import failure_lines
from ..bench.run.validate import (
    Plan,
    extra_hint,
    preflight,
    require_bench_extra,
)
from ..methods import METHODS
from .common import (
    CLIError,
    _apply_flags,
    _check_out,
    _open_store,
    _print_summary,
    check_store_problems,
    load_user_problems,
    resolve_methods,
)


def cmd_suite(args: argparse.Namespace) -> int:
    from ..bench.protocol.suite import BUDGETS, check_tuning_check, run_suite

    if args.budget not in BUDGETS:
        raise CLIError(f"unknown budget {args.budget!r}; accepted: {', '.join(BUDGETS)}")
    if args.address and args.executor != "ray":
        raise CLIError(f"--address {args.address!r} needs --executor ray")
    methods = resolve_methods(args.methods) if args.methods is not None else None
    require_bench_extra("suite")
    _check_out(args.out or f"results/report_{args.budget}")
    _apply_flags(args)
    budget = BUDGETS[args.budget]
    if args.problems is not None:  # a subset of the budget's problems, same epochs, and yours
        names = load_user_problems(args.problems)
        user = {n: get_problem(n) for n in names if n in PROBLEMS and get_problem(n).user}
        bad = [n for n in names if n not in budget.problems and n not in user]
        if bad or not names:
            what = f"{', '.join(bad)} not in budget {args.budget!r}" if bad else "names nothing"
            raise CLIError(f"--problems {args.problems!r}: {what}; accepted: comma-separated "
                           f"names from {', '.join(budget.problems)}, or your problems as "
                           "path/to/file.py:NAME or module.path:NAME")
        budget = dataclasses.replace(budget, problems={
            p: budget.problems[p] if p in budget.problems else budget.epochs_for(user[p])
            for p in names})
    run = methods or list(budget.methods or METHODS)
    if args.tuning_check:
        try:
            check_tuning_check(budget, run)
        except ValueError as exc:
            raise CLIError(str(exc)) from None
    preflight(Plan(tuple(budget.problems), tuple((m, {}) for m in run), args.device))
    store = args.store or f"results/suite_{args.budget}.db"
    check_store_problems(store, list(budget.problems))
    _open_store(store).close()  # a bad store is refused before the workers start
    where = (f"Ray cluster {args.address}" if args.address else "a local Ray cluster") \
        if args.executor == "ray" else f"{args.workers or os.cpu_count()} worker(s)"
    check = "; tuning check: study 0 again with twice the draws" if args.tuning_check else ""
    print(f"suite {args.budget}: {budget.description}{check}; store {store}; {where}",
          file=sys.stderr)
    try:
        res = run_suite(budget, store, methods, workers=args.workers, threads=args.threads,
                        device=args.device, progress=not args.quiet, executor=args.executor,
                        address=args.address, studies=args.studies,
                        tuning_check=args.tuning_check)
    except (ValueError, ImportError) as exc:
        if isinstance(exc, ImportError) and extra_hint(exc):
            raise
        raise CLIError(str(exc)) from None
    with _open_store(store, readonly=True) as st:
        path = write_report(st, args.out or f"results/report_{args.budget}")
        _print_summary(st, None)
    print(f"suite {args.budget}: {res.jobs} trials in {res.seconds:.1f} s; report: {path}")
    if args.tuning_check:
        changed = ", ".join(f"{p}/{m}" for p, m in res.check_changed) or "none"
        print(f"tuning check (twice the draws): best setting changed for {changed}")
    failures: dict[str, list[str]] = {}
    for f in res.failed:
        name, _, msg = f.partition(": ")
        failures.setdefault(msg, []).append(name)
    for line in failure_lines(failures):
        print(line, file=sys.stderr)
    return 1 if res.failed else 0
