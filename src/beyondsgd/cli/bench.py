"""``beyondsgd bench``: problems x methods x seeds into a results store, with a progress bar,
then the table."""

from __future__ import annotations

import argparse
import sys
import time

from ..bench.problems import get_problem
from ..bench.report import label, markdown_table, summarize, write_report
from ..bench.run.batch import TrialSpec, run_batch
from ..bench.run.validate import (
    Plan,
    preflight,
    require_bench_extra,
)
from .common import (
    QUICK_EPOCHS,
    QUICK_PROBLEM,
    _apply_flags,
    _check_out,
    _open_store,
    _progress_bar,
    check_store_problems,
    parse_overrides,
    resolve_methods,
    resolve_problems,
)


def cmd_bench(args: argparse.Namespace) -> int:
    quick = args.problem is None and args.methods is None
    problems = resolve_problems(args.problem, QUICK_PROBLEM)
    methods = resolve_methods(args.methods)
    overrides = parse_overrides(args.set, methods)
    require_bench_extra("bench", ("scipy", "matplotlib") if args.out else ("scipy",))
    _check_out(args.out)
    epochs = args.epochs if args.epochs is not None else (QUICK_EPOCHS if quick else None)
    store_path = args.store or ("results/quick.db" if quick else "results/results.db")
    _apply_flags(args)
    preflight(Plan(tuple(problems), tuple((m, overrides[m]) for m in methods), args.device,
                   epochs, args.train_fraction))
    check_store_problems(store_path, problems)
    if quick:
        print(f"Quick default: {QUICK_PROBLEM}, all {len(methods)} methods, {args.seeds} "
              f"seed(s), {epochs} epochs -> {store_path}", file=sys.stderr)
    plan = [TrialSpec(p, m, overrides[m], s, f"{p}/{label(m, overrides[m])}/seed{s}")
            for p in problems for m in methods for s in range(args.seeds)]
    n_epochs = {p: epochs if epochs is not None else get_problem(p).epochs for p in problems}
    t0 = time.time()
    with _open_store(store_path) as store:
        bar = _progress_bar(sum(n_epochs[t.problem] for t in plan), not args.quiet)

        def on_eval(row: dict) -> None:
            if bar is not None and row["epoch"] > 0:
                bar.update(1)
                bar.set_postfix(epoch=row["epoch"], loss=f"{row['train_loss']:.4g}",
                                test=f"{row['test_metric']:.4g}")

        def on_end(spec: TrialSpec, res, trained: int) -> None:
            if bar is not None:  # skipped, resumed or failed trials: count their epochs too
                bar.update(max(0, n_epochs[spec.problem] - trained))

        def on_new_failure(spec: TrialSpec, msg: str) -> None:
            print(f"\n{spec.name}: FAILED: {msg} (further trials failing the same way are "
                  "counted, not repeated)", file=sys.stderr)

        result = run_batch(plan, store, epochs=epochs, device=args.device,
                           train_fraction=args.train_fraction, tag=args.tag,
                           on_start=(lambda spec: bar.set_description(spec.name)) if bar else None,
                           on_eval=on_eval, on_end=on_end, on_new_failure=on_new_failure)
        if bar is not None:
            bar.close()
        rows = [r for r in summarize(store, problems) if r["method"] in methods]
        print(markdown_table(rows))
        if args.out:
            path = write_report(store, args.out, problems)
            print(f"report: {path}", file=sys.stderr)
    for line in result.messages(store_path):
        print(line, file=sys.stderr)
    print(f"wall time {time.time() - t0:.1f} s; store {store_path}", file=sys.stderr)
    return 1 if result.failed else 0
