"""Command line: ``beyondsgd list | bench | train | suite | report | export``.

Argument parsing and progress display only; the work is done by ``beyondsgd.bench``.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from .bench.problems import PROBLEMS, get_problem
from .bench.report import label, markdown_table, summarize, write_report
from .bench.runner import run_trial
from .bench.store import Store
from .methods import METHODS, get_method_class
from .methods.base import resolve_hparams

QUICK_PROBLEM = "digits_mlp"
QUICK_EPOCHS = 10


class CLIError(Exception):
    """Bad command-line input: printed as ``error: ...`` with exit status 2."""


def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _nonneg_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text!r}") \
            from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {v}")
    return v


def _pos_int(text: str) -> int:
    v = _nonneg_int(text)
    if v == 0:
        raise argparse.ArgumentTypeError("expected a positive integer, got 0")
    return v


def resolve_methods(spec: str | None) -> list[str]:
    if spec is None or spec == "all":
        return list(METHODS)
    names = _csv(spec)
    bad = [n for n in names if n not in METHODS]
    if bad:
        raise CLIError(f"unknown method(s) {', '.join(bad)}; available: {', '.join(METHODS)}")
    return names


def resolve_problems(spec: str | None, default: str) -> list[str]:
    names = _csv(spec) if spec else [default]
    bad = [n for n in names if n not in PROBLEMS]
    if bad:
        raise CLIError(f"unknown problem(s) {', '.join(bad)}; available: {', '.join(PROBLEMS)}")
    return names


def parse_overrides(items: list[str], methods: list[str], single: str | None = None
                    ) -> dict[str, dict[str, Any]]:
    """``--set method.name=value`` (or ``name=value`` when one method) -> per-method dicts."""
    out: dict[str, dict[str, Any]] = {m: {} for m in methods}
    for item in items:
        if "=" not in item:
            raise CLIError(f"--set {item!r}: expected METHOD.NAME=VALUE")
        lhs, value = item.split("=", 1)
        if "." in lhs:
            method, name = lhs.split(".", 1)
        elif single is not None:
            method, name = single, lhs
        else:
            raise CLIError(f"--set {item!r}: name the method, e.g. adam.{lhs}={value}")
        if method not in out:
            raise CLIError(f"--set {item!r}: method {method!r} is not among the methods run "
                           f"({', '.join(methods)})")
        out[method][name] = value
    for method, hp in out.items():
        try:
            out[method] = resolve_hparams(get_method_class(method), hp)
        except ValueError as exc:
            raise CLIError(str(exc)) from None
        out[method] = {k: v for k, v in out[method].items() if k in hp}
    return out


def _apply_data_flags(args: argparse.Namespace) -> None:
    if getattr(args, "threads", None):
        import torch

        torch.set_num_threads(args.threads)
    if getattr(args, "data_dir", None):
        os.environ["BEYONDSGD_FASHION_MNIST"] = args.data_dir
        os.environ["BEYONDSGD_MNIST"] = args.data_dir
    if getattr(args, "download", False):
        os.environ["BEYONDSGD_DOWNLOAD"] = "1"


# ------------------------------------------------------------------------------------------
def cmd_list(args: argparse.Namespace) -> int:
    print("Problems:")
    for p in PROBLEMS.values():
        print(f"  {p.name:<22} {p.description}")
        print(f"  {'':<22} batch {p.batch_size}, {p.epochs} epochs, target test {p.metric} "
              f"{'>=' if p.higher_is_better else '<='} {p.target:g}")
    print("\nMethods (hyperparameter=default; * = tuned by the benchmark protocol):")
    for name, cls in METHODS.items():
        print(f"  {name:<14} {cls.summary}  [{cls.paper}]")
        for h in cls.hparams:
            extra = f" in {list(h.choices)}" if h.choices else ""
            rng = f" range [{h.low:g}, {h.high:g}]{' log' if h.log else ''}" \
                if h.tune and h.low is not None else ""
            star = "*" if h.tune else " "
            print(f"  {'':<14} {star}{h.name}={h.default!r} ({h.type.__name__}{extra}{rng}) "
                  f"{h.help}")
    return 0


def _progress_bar(total: int, enabled: bool):
    if not enabled:
        return None
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover
        return None
    return tqdm(total=total, unit="epoch", dynamic_ncols=True, file=sys.stderr)


def cmd_bench(args: argparse.Namespace) -> int:
    quick = args.problem is None and args.methods is None
    problems = resolve_problems(args.problem, QUICK_PROBLEM)
    methods = resolve_methods(args.methods)
    overrides = parse_overrides(args.set, methods)
    seeds = args.seeds
    epochs = args.epochs if args.epochs is not None else (QUICK_EPOCHS if quick else None)
    store_path = args.store or ("results/quick.db" if quick else "results/results.db")
    if quick:
        print(f"Quick default: {QUICK_PROBLEM}, all {len(methods)} methods, {seeds} seed(s), "
              f"{epochs} epochs -> {store_path}", file=sys.stderr)
        if args.threads is None:
            args.threads = 1
    _apply_data_flags(args)
    plan = [(p, m, s) for p in problems for m in methods for s in range(seeds)]
    total_epochs = sum(epochs if epochs is not None else get_problem(p).epochs
                       for p, _, _ in plan)
    t0 = time.time()
    with Store(store_path) as store:
        bar = _progress_bar(total_epochs, not args.quiet)
        failed = 0
        for p, m, s in plan:
            name = f"{p}/{label(m, overrides[m])}/seed{s}"
            if bar is not None:
                bar.set_description(name)

            def on_eval(row: dict, bar=bar) -> None:
                if bar is not None and row["epoch"] > 0:
                    bar.update(1)
                    bar.set_postfix(epoch=row["epoch"], loss=f"{row['train_loss']:.4g}",
                                    test=f"{row['test_metric']:.4g}")

            try:
                res = run_trial(p, m, overrides[m], seed=s, epochs=epochs, device=args.device,
                                store=store, progress=on_eval, train_fraction=args.train_fraction,
                                tag=args.tag)
            except Exception as exc:  # recorded as failed in the store; keep going
                failed += 1
                print(f"\n{name}: FAILED: {type(exc).__name__}: {exc}", file=sys.stderr)
                continue
            n_ep = epochs if epochs is not None else get_problem(p).epochs
            if bar is not None:
                done = len(res.evals) - 1 if not res.skipped else 0
                bar.update(max(0, n_ep - max(done, 0)))
        if bar is not None:
            bar.close()
        rows = summarize(store, problems)
        rows = [r for r in rows if r["method"] in methods]
        print(markdown_table(rows))
        if args.out:
            path = write_report(store, args.out, problems)
            print(f"report: {path}", file=sys.stderr)
    print(f"wall time {time.time() - t0:.1f} s; store {store_path}", file=sys.stderr)
    return 1 if failed else 0


def cmd_train(args: argparse.Namespace) -> int:
    """One trial. Under ``torchrun --nproc-per-node W`` (``WORLD_SIZE`` > 1) it trains data
    parallel: gloo on CPU, NCCL on GPUs (one per local rank); rank 0 alone prints and writes."""
    from . import distributed as D

    problem = resolve_problems(args.problem, QUICK_PROBLEM)[0]
    method = resolve_methods(args.method)[0]
    hp = parse_overrides(args.set, [method], single=method)[method]
    _apply_data_flags(args)
    started = not D.active()
    device = D.init_from_env(args.device)
    started = started and D.active()
    lead = D.rank() == 0
    store = Store(args.store) if args.store and lead else None
    try:
        if lead:
            world = f" / {D.world_size()} processes" if D.active() else ""
            print(f"{problem} / {label(method, hp)} / seed {args.seed}{world}")
        res = run_trial(problem, method, hp, seed=args.seed, epochs=args.epochs, device=device,
                        store=store, progress=lead, train_fraction=args.train_fraction)
        if lead:
            for e in res.events:
                print("  event:", json.dumps(e, default=str))
            print(f"status: {res.status}; final test {get_problem(problem).metric} "
                  f"{res.final.get('test_metric', float('nan')):.4f}; best {res.best}")
    finally:
        if store:
            store.close()
        if started:
            import torch.distributed as dist

            dist.destroy_process_group()
    return 0 if res.status == "finished" else 3


def cmd_suite(args: argparse.Namespace) -> int:
    from .bench.suite import BUDGETS, run_suite

    if args.budget not in BUDGETS:
        raise CLIError(f"unknown budget {args.budget!r}; accepted: {', '.join(BUDGETS)}")
    methods = resolve_methods(args.methods) if args.methods else None
    _apply_data_flags(args)
    store = args.store or f"results/suite_{args.budget}.db"
    where = (f"Ray cluster {args.address}" if args.address else "a local Ray cluster") \
        if args.executor == "ray" else f"{args.workers or os.cpu_count()} worker(s)"
    print(f"suite {args.budget}: {BUDGETS[args.budget].description}; store {store}; {where}",
          file=sys.stderr)
    if args.address and args.executor != "ray":
        raise CLIError(f"--address {args.address!r} needs --executor ray")
    try:
        res = run_suite(args.budget, store, methods, workers=args.workers, threads=args.threads,
                        device=args.device, progress=not args.quiet, executor=args.executor,
                        address=args.address)
    except (ValueError, ImportError) as exc:
        raise CLIError(str(exc)) from None
    with Store(store) as st:
        path = write_report(st, args.out or f"results/report_{args.budget}")
    print(path.read_text())
    print(f"suite {args.budget}: {res.jobs} trials in {res.seconds:.1f} s; report {path}",
          file=sys.stderr)
    for f in res.failed:
        print(f"FAILED: {f}", file=sys.stderr)
    return 1 if res.failed else 0


def cmd_report(args: argparse.Namespace) -> int:
    if not Path(args.store).exists():
        raise CLIError(f"no store at {args.store}")
    with Store(args.store) as store:
        path = write_report(store, args.out, _csv(args.problem) if args.problem else None,
                            plots=not args.no_plots)
    print(path.read_text())
    print(f"written: {path}", file=sys.stderr)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """Per-trial JSON in a DeepOBS-like layout (problem/method/hparams/seed.json) + one CSV."""
    if not Path(args.store).exists():
        raise CLIError(f"no store at {args.store}")
    out = Path(args.out)
    n = 0
    with Store(args.store) as store, open(_mkparent(out / "evals.csv"), "w", newline="") as fcsv:
        writer = None
        for t in store.trials():
            data = store.export_json(t["id"])
            hp = "__".join(f"{k}={v}" for k, v in sorted(t["hparams"].items())) or "default"
            path = out / t["problem"] / t["method"] / hp[:200] / f"seed{t['seed']}"
            if t["tag"] or t["train_fraction"] < 1:
                path = path.with_name(path.name + f"_{t['tag']}_{t['train_fraction']:g}")
            _mkparent(path.with_suffix(".json")).write_text(json.dumps(data, default=str,
                                                                       indent=1))
            for e in data["evals"]:
                row = {"trial_id": t["id"], "problem": t["problem"], "method": t["method"],
                       "hparams": json.dumps(t["hparams"], sort_keys=True), "seed": t["seed"],
                       "status": t["status"], **{k: e.get(k) for k in (
                           "epoch", "step", "train_seconds", "train_loss", "val_loss",
                           "val_metric", "test_loss", "test_metric")}}
                if writer is None:
                    writer = csv.DictWriter(fcsv, fieldnames=list(row))
                    writer.writeheader()
                writer.writerow(row)
            n += 1
    print(f"exported {n} trials to {out}")
    return 0


def _mkparent(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


# ------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="beyondsgd",
        description="Train and benchmark published alternatives to SGD/Adam.")
    sub = ap.add_subparsers(dest="command", required=True)

    sub.add_parser("list", help="problems, methods and their hyperparameters")

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--epochs", type=_nonneg_int, help="epochs (default: the problem's)")
        p.add_argument("--device", default="cuda" if _cuda() else "cpu")
        p.add_argument("--set", action="append", default=[], metavar="METHOD.NAME=VALUE",
                       help="hyperparameter override (repeatable)")
        p.add_argument("--train-fraction", type=float, default=1.0,
                       help="use this fraction of the training set")
        p.add_argument("--data-dir", help="directory with the (Fashion-)MNIST IDX files")
        p.add_argument("--download", action="store_true",
                       help="download (Fashion-)MNIST if missing (needs internet)")
        p.add_argument("--threads", type=_pos_int,
                       help="torch CPU threads (default: torch's; the quick default uses 1, "
                            "faster for tiny models)")

    b = sub.add_parser("bench", help="problems x methods x seeds into a results store "
                                     "(no arguments: a quick run on built-in data)")
    b.add_argument("--problem", help="problem name(s), comma-separated (default: digits_mlp)")
    b.add_argument("--methods", help="method names, comma-separated, or 'all' (default: all)")
    b.add_argument("--seeds", type=_pos_int, default=2, help="number of seeds (0..N-1)")
    b.add_argument("--store", help="SQLite results file (default results/results.db)")
    b.add_argument("--out", help="also write report.md and plots into this directory")
    b.add_argument("--tag", default="", help="label stored with each trial")
    b.add_argument("--quiet", action="store_true", help="no progress bar")
    common(b)

    t = sub.add_parser("train", help="one trial of one method, printing the curve; data "
                                     "parallel under torchrun --nproc-per-node W")
    t.add_argument("--problem", required=True)
    t.add_argument("--method", required=True)
    t.add_argument("--seed", type=_nonneg_int, default=0)
    t.add_argument("--store", help="optional SQLite results file")
    common(t)

    su = sub.add_parser("suite", help="the benchmark protocol: tuning + seeds + defaults for "
                                      "every problem x method of a budget, then the report")
    su.add_argument("--budget", default="smoke", help="smoke | small | full")
    su.add_argument("--methods", help="restrict to these methods (comma-separated)")
    su.add_argument("--store", help="SQLite results file (default results/suite_BUDGET.db)")
    su.add_argument("--out", help="report directory (default results/report_BUDGET)")
    su.add_argument("--workers", type=_pos_int,
                    help="worker processes (default: one per core; a local Ray cluster gets "
                         "workers x threads CPUs)")
    su.add_argument("--executor", default="local", choices=("local", "ray"),
                    help="local process pool (default) or Ray tasks (pip install "
                         "'beyondsgd[ray]'); the driver alone writes the store")
    su.add_argument("--address", help="Ray cluster address (e.g. auto, ray://head:10001); "
                                      "default: start a local cluster")
    su.add_argument("--threads", type=_pos_int, help="torch threads per worker "
                                                     "(default: cores / workers)")
    su.add_argument("--device", default="cuda" if _cuda() else "cpu")
    su.add_argument("--quiet", action="store_true")
    su.add_argument("--data-dir", help="directory with the (Fashion-)MNIST IDX files")
    su.add_argument("--download", action="store_true")

    r = sub.add_parser("report", help="Markdown table and PNG curves from a store")
    r.add_argument("store")
    r.add_argument("--out", default="report")
    r.add_argument("--problem", help="restrict to these problems (comma-separated)")
    r.add_argument("--no-plots", action="store_true")

    e = sub.add_parser("export", help="per-trial JSON files and a CSV of all evaluations")
    e.add_argument("store")
    e.add_argument("--out", default="export")
    return ap


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


COMMANDS = {"list": cmd_list, "bench": cmd_bench, "train": cmd_train, "suite": cmd_suite,
            "report": cmd_report, "export": cmd_export}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except CLIError as exc:
        print(f"beyondsgd {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted: finished trials are in the store; re-run the same command to "
              "resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
